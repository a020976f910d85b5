"""Per-job resources derived from the config (r2i.resources), as the rules' `resources:` use them.

The rule names passed here are labels for the kind of work (and for messages); the tests do not
depend on how synthesis is split into rules: they pass the roles a job calls and whether it
segments, as a rule does.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from r2i.config import load_config
from r2i.resources import (
    GPU_WORK,
    ResourceError,
    evaluation_resources,
    job_resources,
)

from .conftest import REPO

ALL_ROLES = ["teacher", "teacher_b", "consensus", "student", "judge"]


@pytest.fixture(scope="module")
def toy() -> dict:
    return load_config(REPO / "config" / "config.yaml")


@pytest.fixture(scope="module")
def prod() -> dict:
    return load_config(REPO / "config" / "config.production.yaml")


def test_production_config_is_valid(prod: dict) -> None:
    """The docs' first production command must not fail at config validation."""
    assert prod["segmenter"]["backend"] == "sam3"
    assert prod["cluster"]["node"]["gpus"] == 8


def test_toy_default_needs_no_gpu_and_fits_a_small_node(toy: dict) -> None:
    """Everything in the embedded default talks to the simulator: no GPU anywhere."""
    jobs = {
        "stage": job_resources(toy, "synthesize", roles=ALL_ROLES, segmenter=True),
        "objects": job_resources(toy, "objects", roles=["teacher"], segmenter=True),
        "attention": job_resources(toy, "attention", own_gpus=toy["evaluation"]["attention"]["gpus"]),
        "manifest": job_resources(toy, "manifest"),
        "crops": job_resources(toy, "crops"),
    }
    ev = evaluation_resources(toy)
    wc = SimpleNamespace(model="sim-student")
    jobs["evaluate"] = {k: f(wc) for k, f in ev.items()}
    for name, res in jobs.items():
        assert not res.get("gpu"), (name, res)
        assert "cpus_per_gpu" not in res or not res.get("gpu"), (name, res)
        # the single-node test cluster has 2 CPUs and ~23 GB: every toy job must fit it
        assert res["mem_mb"] <= 8_000, (name, res)
        assert res["runtime"] >= 60, (name, res)


def test_production_gpus_follow_the_endpoints(prod: dict) -> None:
    # the teacher and both APIs are base_url endpoints: stages that only call them ask no GPU
    for roles in (["teacher"], ["teacher", "teacher_b", "consensus"]):
        res = job_resources(prod, "questions", roles=roles)
        assert "gpu" not in res, (roles, res)
        assert res["mem_mb"] >= 4_000
    # SAM3 in the job: one GPU, with CPUs and memory for it
    obj = job_resources(prod, "objects", roles=["teacher"], segmenter=True)
    assert obj["gpu"] == 1
    assert obj["cpus_per_gpu"] == GPU_WORK["sam3"].cpus_per_gpu
    assert obj["mem_mb"] >= GPU_WORK["sam3"].mem_mb_per_gpu
    # student + judge launched (1 GPU each): 2 GPUs, vLLM-sized host memory
    diff = job_resources(prod, "difficulty", roles=["student", "judge"])
    assert diff["gpu"] == 2
    assert diff["mem_mb"] >= 2 * GPU_WORK["vllm"].mem_mb_per_gpu
    assert diff["runtime"] > job_resources(prod, "questions", roles=["teacher"])["runtime"], (
        "launched servers' start-up time is added to the wall time"
    )
    # one job for all stages of a shard: student + judge + SAM3
    one = job_resources(prod, "synthesize", roles=ALL_ROLES, segmenter=True)
    assert one["gpu"] == 3
    # evaluate: the evaluated model's endpoint and the judge's, both launched
    ev = evaluation_resources(prod)
    wc = SimpleNamespace(model="qwen3-vl-8b")
    assert ev["gpu"](wc) == 2 and ev["cpus_per_gpu"](wc) >= 1
    att = job_resources(prod, "attention", own_gpus=prod["evaluation"]["attention"]["gpus"])
    assert att["gpu"] == 1


def test_a_role_shared_endpoint_is_counted_once(prod: dict) -> None:
    cfg = copy.deepcopy(prod)
    cfg["models"]["judge"]["endpoint"] = "qwen3vl8b"  # student and judge on one server
    assert job_resources(cfg, "difficulty", roles=["student", "judge"])["gpu"] == 1


def test_training_geometry(prod: dict) -> None:
    res = job_resources(prod, "train")
    assert res["gpu"] == prod["train"]["gpus_per_node"] == 8
    assert res["nodes"] == prod["train"]["nodes"]
    assert res["slurm_extra"] == "--exclusive"
    assert res["cpus_per_gpu"] * res["gpu"] <= prod["cluster"]["node"]["cpus"]
    assert res["mem_mb"] <= prod["cluster"]["node"]["mem_mb"]
    cfg = copy.deepcopy(prod)
    cfg["train"].update(nodes=4, gpus_per_node=4)
    res = job_resources(cfg, "train")
    assert (res["nodes"], res["gpu"]) == (4, 4)
    # merging the checkpoint is CPU work
    assert "gpu" not in job_resources(prod, "merge")


def test_node_size_caps_cpus_and_memory(prod: dict) -> None:
    cfg = copy.deepcopy(prod)
    cfg["cluster"]["node"].update(cpus=16, mem_mb=100_000)
    res = job_resources(cfg, "difficulty", roles=["student", "judge"])
    assert res["gpu"] * res["cpus_per_gpu"] <= 16
    assert res["mem_mb"] == 100_000


def test_gpu_model_only_on_gpu_jobs(prod: dict) -> None:
    cfg = copy.deepcopy(prod)
    cfg["cluster"]["gpu_model"] = "h100"
    assert job_resources(cfg, "objects", roles=["teacher"], segmenter=True)["gpu_model"] == "h100"
    assert "gpu_model" not in job_resources(cfg, "questions", roles=["teacher"])
    # evaluate: same keys for every model, no --gpus for a model that needs none
    cfg["endpoints"]["api"] = {"base_url": "https://api.example.org/v1"}
    cfg["evaluation"]["models"]["hosted"] = {"endpoint": "api", "model": "m"}
    cfg["evaluation"]["judge"] = None
    ev = evaluation_resources(cfg)
    hosted, local = SimpleNamespace(model="hosted"), SimpleNamespace(model="qwen3-vl-8b")
    assert ev["gpu"](hosted) == 0 and not ev["gpu_model"](hosted)
    assert ev["gpu"](local) == 1 and ev["gpu_model"](local) == "h100"


def test_more_gpus_than_a_node_fails_with_the_fix(prod: dict) -> None:
    """8 GPUs for a launched teacher + 1 for SAM3 do not fit an 8-GPU node: say how to fix it."""
    cfg = copy.deepcopy(prod)
    cfg["endpoints"]["qwen3vl235b"] = {
        "launch": "vllm serve /models/Qwen3-VL-235B --port {port} --tensor-parallel-size 8",
        "gpus": 8,
        "max_concurrency": 128,
        "startup_timeout_s": 3600,
    }
    with pytest.raises(ResourceError) as err:
        job_resources(cfg, "objects", roles=["teacher"], segmenter=True)
    msg = str(err.value)
    assert "rule 'objects' needs 9 GPUs" in msg
    assert "cluster.node.gpus" in msg and "8" in msg
    assert "endpoint 'qwen3vl235b'" in msg and "SAM3" in msg
    assert "endpoints.qwen3vl235b.base_url" in msg  # the fix: a standing server
    # fits once the node is big enough
    cfg["cluster"]["node"]["gpus"] = 16
    assert job_resources(cfg, "objects", roles=["teacher"], segmenter=True)["gpu"] == 9


def test_training_wider_than_a_node_fails(prod: dict) -> None:
    cfg = copy.deepcopy(prod)
    cfg["train"]["gpus_per_node"] = 16
    with pytest.raises(ResourceError, match=r"train\.nodes"):
        job_resources(cfg, "train")


def test_evaluation_misfit_fails_when_resources_are_built(prod: dict) -> None:
    cfg = copy.deepcopy(prod)
    cfg["endpoints"]["qwen3vl8b"]["gpus"] = 8  # + the judge's 1
    with pytest.raises(ResourceError, match="needs 9 GPUs"):
        evaluation_resources(cfg)
