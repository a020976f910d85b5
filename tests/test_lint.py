"""The workflow and the code pass their linters (run as tests so CI enforces them)."""

from __future__ import annotations

import subprocess

from .conftest import BIN, REPO


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_snakemake_lint_clean():
    res = _run(str(BIN / "snakemake"), "--lint")
    assert res.returncode == 0 and "Congratulations" in res.stdout + res.stderr, res.stdout + res.stderr


def test_snakefmt_clean():
    res = _run(str(BIN / "snakefmt"), "--check", "Snakefile", "rules")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_clean():
    res = _run(str(BIN / "ruff"), "check", "workflow", "scripts", "tests", "bench")
    assert res.returncode == 0, res.stdout + res.stderr


def test_dry_run_lists_stage_rules():
    res = _run(str(BIN / "snakemake"), "-n", "--forceall")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for rule in ("toy_world", "pool_signature", "manifest", "synthesize", "dataset"):
        assert rule in out
