"""Snakemake on a real SLURM cluster through profiles/slurm (snakemake-executor-plugin-slurm).

The profile checks run everywhere; the cluster tests are skipped unless a SLURM controller
answers `sinfo` (CI starts a single-node cluster with tests/slurm/start-cluster.sh before
pytest). Small self-contained workflows are written into tmp_path; the helpers in
tests/slurm/harness.py are meant for reuse by the toy-world DAG test.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.slurm.harness import (
    PROFILE,
    REPO,
    SlurmCluster,
    interrupt,
    run_snakemake_slurm,
    slurm_cluster_fixture,  # noqa: F401 (the `slurm_cluster` fixture)
    squeue_ids,
    start_snakemake_slurm,
    wait_until,
)

SMALL_WORKFLOW = textwrap.dedent(
    """
    rule all:
        input: "prep.txt", "flaky.txt", "gpu.txt"

    rule prep:
        output: "prep.txt"
        shell: "echo prep job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION > {output}"

    # fails on its first attempt (creating the marker), succeeds when the profile retries it
    rule flaky:
        output: "flaky.txt"
        params: marker="flaky.marker"
        resources: attempt_no=lambda wc, attempt: attempt
        shell:
            "if [ ! -e {params.marker} ]; then touch {params.marker}; echo first attempt fails >&2; exit 3; fi; "
            "echo attempt={resources.attempt_no} job=$SLURM_JOB_ID > {output}"

    rule gpu:
        output: "gpu.txt"
        resources: gpu=1, cpus_per_gpu=1
        shell: "echo cuda=$CUDA_VISIBLE_DEVICES job_gpus=${{SLURM_JOB_GPUS:-}} job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION > {output}"
    """
)

LONG_WORKFLOW = textwrap.dedent(
    """
    rule long_sleeper:
        output: "never.txt"
        shell: "sleep 600; touch {output}"
    """
)


# ------------------------------------------------------------------------------------------
# The profile itself (no cluster needed)
# ------------------------------------------------------------------------------------------

def render_profile(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    from snakemake.profiles import ProfileConfigFileParser

    for key in [k for k in os.environ if k.startswith("R2I_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with open(PROFILE / "config.yaml") as fh:
        return dict(ProfileConfigFileParser().parse(fh))


def test_profile_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    prof = render_profile(monkeypatch)
    assert prof["executor"] == "slurm"
    assert int(prof["retries"]) >= 1
    defaults = dict(item.split("=", 1) for item in prof["default-resources"])
    assert {"mem_mb", "runtime"} <= set(defaults)
    # no partition/account unless asked: routing by partitions.yaml, account guessed by the plugin
    assert "slurm_partition" not in defaults and "slurm_account" not in defaults
    # a default cpus_per_task would override cpus_per_gpu of the GPU rules
    assert "cpus_per_task" not in defaults
    assert Path(prof["slurm-partition-config"]).name == "partitions.yaml"
    # SLURM never requeues by itself: failed/preempted jobs are resubmitted by Snakemake only
    assert prof["slurm-no-requeue"] in (True, "True", "true")


def test_profile_sizes_no_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-rule resources live in the rules (derived from the config), not in the profile:
    a command-line --set-resources replaces a profile's whole set-resources block."""
    prof = render_profile(monkeypatch)
    assert "set-resources" not in prof, prof.get("set-resources")
    assert "set-threads" not in prof


def test_profile_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    prof = render_profile(
        monkeypatch,
        R2I_SLURM_PARTITION="batch",
        R2I_SLURM_ACCOUNT="proj42",
        R2I_SLURM_PARTITIONS="/site/partitions.yaml",
        R2I_SLURM_JOBS="7",
    )
    assert "slurm_partition='batch'" in prof["default-resources"]
    assert "slurm_account='proj42'" in prof["default-resources"]
    assert prof["slurm-partition-config"] == "/site/partitions.yaml"
    assert prof["jobs"] == "7"


def _cluster_installs() -> list[tuple[str, set[str]]]:
    """The `pip install -e '.[...]'` extras of the README's and docs/cluster.md's cluster part."""
    import re

    readme = (REPO / "README.md").read_text()
    cluster_part = readme[readme.index("## Cluster use (SLURM)") :]
    docs = (REPO / "docs" / "cluster.md").read_text()
    found = []
    for name, text in (("README.md", cluster_part), ("docs/cluster.md", docs)):
        m = re.search(r"pip install -e '\.\[([a-z,]+)\]'", text)
        assert m, f"{name}: no pip install line in the cluster instructions"
        found.append((name, set(m.group(1).split(","))))
    return found


def test_cluster_install_has_what_the_default_run_needs() -> None:
    """The documented cluster install must provide the plugin and what the default target runs
    (torch + transformers for the attention job on the tiny random Qwen-VL)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for name, chosen in _cluster_installs():
        pkgs = " ".join(p for extra in chosen for p in extras[extra])
        assert "snakemake-executor-plugin-slurm" in pkgs, name
        if default["evaluation"]["attention"]["models"]:
            assert "torch" in pkgs and "transformers" in pkgs, (name, chosen)


def test_partition_routing_file() -> None:
    """partitions.yaml sends GPU jobs to `gpu` and CPU jobs to `cpu` (the plugin's scoring)."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    parts = read_partition_file(PROFILE / "partitions.yaml")

    def best(resources: dict, threads: int = 1) -> str:
        job = SimpleNamespace(resources=resources, threads=threads, name="j")
        scored = [(p.score_job_fit(job), p.name) for p in parts]
        return max((s, n) for s, n in scored if s is not None)[1]

    assert best({"mem_mb": 4000}) == "cpu"
    assert best({"mem_mb": 4000, "gpu": 0}, threads=2) == "cpu"
    assert best({"gpu": 1, "cpus_per_gpu": 8}) == "gpu"


# ------------------------------------------------------------------------------------------
# On the cluster
# ------------------------------------------------------------------------------------------


def _require_test_partitions(cluster: SlurmCluster) -> None:
    if not {"cpu", "gpu"} <= set(cluster.partitions) or not cluster.has_gpus():
        pytest.skip(
            "needs partitions 'cpu' and 'gpu' with gres/gpu as set up by "
            f"tests/slurm/start-cluster.sh (found {cluster.partitions}, gres {cluster.gres})"
        )


@pytest.fixture(scope="module")
def small_run(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory):
    """One run of the small workflow, shared by the checks below."""
    _require_test_partitions(slurm_cluster)
    wd = tmp_path_factory.mktemp("slurm-small")
    (wd / "Snakefile").write_text(SMALL_WORKFLOW)
    res = run_snakemake_slurm(wd, ["all"], cluster=slurm_cluster, timeout=240)
    return wd, res


def test_small_workflow_completes(small_run) -> None:
    wd, res = small_run
    assert res.returncode == 0, res.output[-4000:]
    assert res.run_id, "no 'SLURM run ID' in the output: was the slurm executor used?"
    for name in ("prep.txt", "flaky.txt", "gpu.txt"):
        assert (wd / name).exists(), name
    assert (wd / ".snakemake" / "slurm_logs").is_dir()


def test_jobs_visible_in_sacct(small_run, slurm_cluster: SlurmCluster) -> None:
    wd, res = small_run
    assert res.returncode == 0, res.output[-4000:]
    if not slurm_cluster.sacct_ok:
        pytest.skip("sacct does not answer (no slurmdbd accounting on this cluster)")
    jobs = slurm_cluster.sacct_run(res.run_id, wait_for={"prep", "flaky", "gpu"})
    by_rule: dict[str, list] = {}
    for j in jobs:
        assert j.name == res.run_id
        by_rule.setdefault(j.rule, []).append(j)
    assert set(by_rule) == {"prep", "flaky", "gpu"}, jobs
    # job ids recorded in the outputs are the ones sacct knows
    prep_id = (wd / "prep.txt").read_text().split("job=")[1].split()[0]
    assert prep_id in {j.jobid for j in by_rule["prep"]}
    # CPU rules on the default (cpu) partition, routed by profiles/slurm/partitions.yaml
    assert {j.partition for j in by_rule["prep"]} == {"cpu"}
    if slurm_cluster.account:
        assert {j.account for j in jobs} == {slurm_cluster.account}


def test_gpu_rule_requested_a_gpu(small_run, slurm_cluster: SlurmCluster) -> None:
    wd, res = small_run
    assert res.returncode == 0, res.output[-4000:]
    out = (wd / "gpu.txt").read_text()
    # SLURM bound one (fake) GPU to the job: CUDA_VISIBLE_DEVICES set from the gres device index
    assert "cuda=0" in out or "cuda=1" in out, out
    assert "partition=gpu" in out, out
    if not slurm_cluster.sacct_ok:
        pytest.skip("sacct does not answer")
    (gpu_job,) = [
        j for j in slurm_cluster.sacct_run(res.run_id, wait_for={"gpu"}) if j.rule == "gpu"
    ]
    assert "gres/gpu=1" in gpu_job.req_tres, gpu_job
    assert "gres/gpu=1" in gpu_job.alloc_tres, gpu_job
    assert gpu_job.partition == "gpu"
    assert gpu_job.state == "COMPLETED"


def test_failed_job_is_retried(small_run, slurm_cluster: SlurmCluster) -> None:
    wd, res = small_run
    assert res.returncode == 0, res.output[-4000:]
    assert (wd / "flaky.marker").exists()
    assert "attempt=2" in (wd / "flaky.txt").read_text()
    if not slurm_cluster.sacct_ok:
        pytest.skip("sacct does not answer")
    flaky = [
        j for j in slurm_cluster.sacct_run(res.run_id, wait_for={"flaky"}) if j.rule == "flaky"
    ]
    states = [j.state for j in sorted(flaky, key=lambda j: int(j.jobid))]
    assert states == ["FAILED", "COMPLETED"], flaky


def test_interrupt_cancels_running_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Ctrl-C on snakemake: the plugin scancels its jobs, nothing stays in squeue."""
    (tmp_path / "Snakefile").write_text(LONG_WORKFLOW)
    log = tmp_path / "snakemake.log"
    proc = start_snakemake_slurm(tmp_path, ["--retries", "0"], cluster=slurm_cluster, log=log)
    run_id = None
    try:
        run_id = wait_until(
            lambda: next(
                iter(
                    line.split("SLURM run ID: ")[1].strip()
                    for line in log.read_text(errors="replace").splitlines()
                    if "SLURM run ID: " in line
                ),
                None,
            ),
            timeout=60,
        )
        assert run_id, log.read_text()
        # the job is submitted and running
        running = wait_until(
            lambda: squeue_ids(run_id, states="RUNNING"),
            timeout=60,
        )
        assert running, f"job never ran; squeue: {squeue_ids(run_id)}\n{log.read_text()[-3000:]}"
        rc = interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # whatever happened, the 10-minute sleeper must not hold the node for the later tests
        leftover = wait_until(lambda: not squeue_ids(run_id), timeout=30) if run_id else True
        if not leftover:
            subprocess.run(["scancel", *squeue_ids(run_id)], check=False)
    output = log.read_text(errors="replace")
    assert rc != 0, output[-3000:]
    assert leftover, f"jobs still queued after Ctrl-C: {squeue_ids(run_id)}\n{output[-3000:]}"
    assert not (tmp_path / "never.txt").exists()
    if slurm_cluster.sacct_ok:
        jobs = slurm_cluster.sacct_run(run_id, wait_for={"long_sleeper"})
        assert [j.state.split()[0] for j in jobs] == ["CANCELLED"], jobs
