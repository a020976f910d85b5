"""The README's cluster command on the test cluster: `snakemake --profile profiles/slurm`.

The embedded default (toy world, simulated models: test doubles) run as written: the default
target, the default config, profiles/slurm unchanged (only the status-poll cadence is shortened,
tests/slurm/harness.py FAST_ARGS, which changes no job). Snakemake, the executor plugin, sbatch,
slurmctld/slurmd and sacct are real; the test node's partitions `cpu`/`gpu` are capped at this
machine's real CPUs and memory (tests/slurm/start-cluster.sh), so a job that asks for more than a
small node has is refused as it would be on a real one.

While it runs, a running job is killed with `scancel` (sacct then says `CANCELLED by 0`): the
run must notice, resubmit it (the profile's retries) and finish.

Skipped unless a SLURM controller answers (CI starts one with tests/slurm/start-cluster.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e import REPO, cache_entries, dataset_rows, snakemake
from tests.slurm.harness import (
    SlurmCluster,
    run_snakemake_slurm,
    slurm_cluster_fixture,  # noqa: F401 (the `slurm_cluster` fixture)
    squeue_ids,
    start_snakemake_slurm,
    wait_until,
)

pytestmark = pytest.mark.e2e

CANCEL_RULE = "toy_world"  # the first job of the run; runs for a while (Snakemake start + world)
NOTICE_S = 240  # the cancelled job must be resubmitted within this (status checks: seconds)
RUN_S = 1800


def _run_id(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if "SLURM run ID: " in line:
            return line.split("SLURM run ID: ")[1].strip()
    return None


def _jobs_of(run_id: str) -> list[tuple[str, str, str]]:
    """(job id, rule, state) of the run's jobs in squeue."""
    res = subprocess.run(["squeue", "-h", "--name", run_id, "-o", "%i|%k|%T"],
                         capture_output=True, text=True, timeout=20, check=False)  # fmt: skip
    out = []
    for line in res.stdout.splitlines():
        jobid, comment, state = [*line.split("|"), "", ""][:3]
        out.append((jobid, comment.removeprefix("rule_").split("_wildcards_")[0], state))
    return out


@pytest.mark.timeout(RUN_S + 600)
def test_readme_cluster_command_runs_and_survives_scancel(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    log = tmp_path / "snakemake.log"
    # the README: `snakemake --profile profiles/slurm` (here in a scratch directory)
    proc = start_snakemake_slurm(tmp_path, ["-s", str(REPO / "Snakefile")],
                                 cluster=slurm_cluster, log=log)  # fmt: skip
    cancelled: str | None = None
    try:
        run_id = wait_until(lambda: _run_id(log), timeout=120)
        assert run_id, log.read_text()[-3000:]

        def running_target() -> str | None:
            for jobid, rule, state in _jobs_of(run_id):
                if rule == CANCEL_RULE and state == "RUNNING":
                    return jobid
            return None

        cancelled = wait_until(running_target, timeout=300, interval=0.2)
        assert cancelled, f"no running {CANCEL_RULE} job: {_jobs_of(run_id)}\n{log.read_text()[-3000:]}"
        subprocess.run(["scancel", cancelled], check=True, timeout=20)

        def resubmitted() -> bool:
            return any(r == CANCEL_RULE and j != cancelled for j, r, _ in _jobs_of(run_id)) or (
                proc.poll() is not None
            )

        noticed = wait_until(resubmitted, timeout=NOTICE_S, interval=1)
        assert noticed, (
            f"the scancelled job {cancelled} was not noticed within {NOTICE_S} s "
            f"(squeue: {_jobs_of(run_id)})\n{log.read_text(errors='replace')[-3000:]}"
        )
        rc = proc.wait(timeout=RUN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            ids = squeue_ids(_run_id(log)) if _run_id(log) else []
            if ids:
                subprocess.run(["scancel", *ids], check=False, timeout=20)
    output = log.read_text(errors="replace")
    assert rc == 0, output[-6000:]

    # every job in sacct: the cancelled one, its retry, and all others completed
    jobs = slurm_cluster.sacct_run(run_id, wait_for={"dataset", "eval_metrics", "attention"}, timeout=90)
    by_rule: dict[str, list] = {}
    for j in sorted(jobs, key=lambda j: int(j.jobid)):
        by_rule.setdefault(j.rule, []).append(j)
    states = [j.state for j in by_rule[CANCEL_RULE]]
    assert states[0].startswith("CANCELLED") and states[-1] == "COMPLETED", states
    assert by_rule[CANCEL_RULE][0].jobid == cancelled
    others = [j for j in jobs if j.jobid != cancelled]
    assert all(j.state == "COMPLETED" for j in others), [(j.rule, j.state) for j in others]
    assert {"toy_world", "manifest", "dataset", "evaluate", "attention", "tiny_vlm"} <= set(by_rule)
    # the embedded default only talks to the simulator: no job asks for a GPU, all run on `cpu`
    assert not [j for j in jobs if "gres/gpu" in j.req_tres], [(j.rule, j.req_tres) for j in jobs]
    assert {j.partition for j in jobs} == {"cpu"}, {(j.rule, j.partition) for j in jobs}
    assert not squeue_ids(run_id)

    # the default run's products
    rows = dataset_rows(tmp_path)
    assert rows, "empty dataset"
    assert list((tmp_path / "results" / "toy" / "eval").glob("*/*/metrics.json"))
    assert list((tmp_path / "results" / "toy" / "attention").glob("*/*/summary.json"))
    assert (tmp_path / "results" / "toy" / "report" / "run" / "run.html").exists()
    # the same outputs as a local run (`snakemake -c 2 synthesis`, fed the SLURM run's call cache:
    # no model call is repeated, and the rows, images and answers are identical)
    local = tmp_path / "local"
    shutil.copytree(tmp_path / ".r2i-cache", local / ".r2i-cache")
    calls_before = cache_entries(local / ".r2i-cache")
    snakemake(local, "synthesis")
    assert cache_entries(local / ".r2i-cache") == calls_before, "the local run made model calls"
    want = dataset_rows(local)
    assert rows.keys() == want.keys()
    for k, row in want.items():
        assert rows[k]["reward_model"] == row["reward_model"]
        assert rows[k]["images"][0]["bytes"] == row["images"][0]["bytes"]
        assert rows[k]["extra_info"]["question"] == row["extra_info"]["question"]

    # the same command again has nothing to do
    again = run_snakemake_slurm(tmp_path, ["-s", str(REPO / "Snakefile"), "-n"],
                                cluster=slurm_cluster, timeout=300)  # fmt: skip
    assert again.returncode == 0 and "Nothing to be done" in again.output, again.output[-3000:]
