"""The toy-world synthesis DAG on a real (single-node) SLURM cluster through profiles/slurm.

Skipped unless a SLURM controller answers (CI starts one with tests/slurm/start-cluster.sh).
The simulated models and toy world are test doubles; Snakemake, the executor plugin, sbatch,
slurmctld/slurmd and sacct are real.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import REPO, SENTINEL, dataset_rows, snakemake, tiny_config
from tests.slurm.harness import (
    SlurmCluster,
    run_snakemake_slurm,
    slurm_cluster_fixture,  # noqa: F401 (the `slurm_cluster` fixture)
    squeue_ids,
)

pytestmark = pytest.mark.e2e
MODEL_STAGES = {"objects", "questions", "answers", "mcq", "difficulty"}


def test_toy_dag_on_slurm_matches_local_run(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    if not slurm_cluster.has_gpus():
        pytest.skip("the test cluster declares no GPUs")
    # The launched simulator "needs" one GPU, so every model-backed stage job requests one.
    slurm_wd = tmp_path / "slurm"
    slurm_wd.mkdir()
    cfg = tiny_config(slurm_wd, endpoints__sim__gpus=1)
    res = run_snakemake_slurm(
        slurm_wd,
        ["-s", str(REPO / "Snakefile"), "--configfile", str(cfg),
         "--set-resources", "objects:mem_mb=2000", "--default-resources", "mem_mb=1000"],
        cluster=slurm_cluster, env={"R2I_TEST_API_KEY": SENTINEL}, timeout=1500,
    )  # fmt: skip
    assert res.returncode == 0, res.output[-6000:]
    assert res.run_id
    jobs = slurm_cluster.sacct_run(res.run_id, wait_for=MODEL_STAGES | {"dataset"}, timeout=60)
    by_rule: dict[str, list] = {}
    for j in jobs:
        by_rule.setdefault(j.rule, []).append(j)
    assert {"toy_world", "manifest", "crops", "dataset"} | MODEL_STAGES <= set(by_rule), sorted(by_rule)
    assert all(j.state.startswith("COMPLETED") for j in jobs), [(j.rule, j.state) for j in jobs]
    for rule in MODEL_STAGES:
        assert all("gres/gpu=1" in j.req_tres for j in by_rule[rule]), (rule, by_rule[rule][0].req_tres)
        assert all(j.partition == "gpu" for j in by_rule[rule])
    assert all("gres/gpu" not in j.req_tres for j in by_rule["crops"] + by_rule["dataset"])
    assert not squeue_ids(res.run_id)

    local_wd = tmp_path / "local"
    local_wd.mkdir()
    snakemake(local_wd, config=tiny_config(local_wd, endpoints__sim__gpus=1))
    got, want = dataset_rows(slurm_wd), dataset_rows(local_wd)
    assert got.keys() == want.keys() and len(want) > 0
    for k, row in want.items():
        assert got[k]["reward_model"] == row["reward_model"]
        assert got[k]["images"][0]["bytes"] == row["images"][0]["bytes"]
        assert got[k]["extra_info"]["question"] == row["extra_info"]["question"]
