"""The `r2i` command: targets and overlay configs it hands to Snakemake (dry runs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from r2i.cli import _has_cores, evaluate_overlay

from .e2e import BIN, env, tiny_config


def _r2i(wd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "r2i"), "-d", str(wd), *args], capture_output=True,
                          text=True, env=env(), timeout=300)


def test_overlay_launches_vllm_for_the_directory(tmp_path: Path) -> None:
    ov = evaluate_overlay(str(tmp_path / "hf"), "mine", endpoint=None, model=None, gpus=2,
                          vllm_args="--max-model-len 8192", attention=True, benchmarks=["zb"],
                          views=["full", "crop"])
    ep = ov["endpoints"]["vllm-mine"]
    assert ep["launch"].startswith(f"vllm serve {tmp_path / 'hf'} --port {{port}} "
                                   "--served-model-name mine --tensor-parallel-size 2")
    assert ep["launch"].endswith("--max-model-len 8192") and ep["gpus"] == 2
    assert ov["evaluation"]["models"] == {"mine": {"endpoint": "vllm-mine", "model": "mine"}}
    assert ov["evaluation"]["attention"]["models"] == {"mine": {"path": str(tmp_path / "hf")}}
    assert ov["evaluation"]["benchmarks"] == ["zb"]
    assert ov["evaluation"]["views"] == ["full", "crop"]
    assert "attention" not in evaluate_overlay("d", "n", endpoint="sim", model="m", gpus=1,
                                               vllm_args="", attention=False, benchmarks=None,
                                               views=None)["evaluation"]


def test_cores_detection() -> None:
    assert _has_cores(["-c", "2"]) and _has_cores(["--cores=4"]) and _has_cores(["-j8"])
    assert _has_cores(["--profile", "profiles/slurm"])
    assert not _has_cores(["-n", "--configfile", "x.yaml"])


def test_evaluate_a_model_dir_dry_run(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    res = _r2i(tmp_path, "evaluate", "resources/toy/models/tiny-qwen2_5_vl", "--name", "tinyeval",
               "--endpoint", "sim", "--model", "sim-student", "--", "--configfile", str(cfg), "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    overlay = yaml.safe_load((tmp_path / ".r2i/evaluate-tinyeval.yaml").read_text())
    assert overlay["evaluation"]["models"]["tinyeval"] == {"endpoint": "sim",
                                                           "model": "sim-student"}
    assert "results/toy/eval/tinyeval/toy_zoombench/metrics.json" in out
    assert "results/toy/attention/tinyeval/toy_zoombench/summary.json" in out
    assert "rule tiny_vlm" in out  # the model directory is made by the workflow first
    assert "sim-student/toy_zoombench" not in out  # only the asked-for model


def test_synthesize_targets_only_the_dataset(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    res = _r2i(tmp_path, "synthesize", "--", "--configfile", str(cfg), "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "rule dataset" in out and "rule toy_world" in out
    assert "rule evaluate" not in out and "rule attention" not in out
    assert "rule report_" not in out


def test_unknown_endpoint_is_named(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    res = _r2i(tmp_path, "evaluate", "somewhere", "--endpoint", "nope", "--", "--configfile",
               str(cfg), "-n")
    assert res.returncode != 0 and "endpoint 'nope' is not in the config" in res.stderr


@pytest.mark.parametrize("name", ["bad/name", "a b"])
def test_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    res = _r2i(tmp_path, "evaluate", "x", "--name", name, "--endpoint", "sim", "--",
               "--configfile", str(tiny_config(tmp_path)), "-n")
    assert res.returncode != 0 and "may only use letters" in res.stderr
