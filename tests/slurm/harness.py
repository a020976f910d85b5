"""Helpers for tests that run Snakemake on a real SLURM cluster with profiles/slurm.

The single-node test cluster comes from ``tests/slurm/start-cluster.sh``; tests that need it use
the ``slurm_cluster`` fixture, which skips (with the reason) when no cluster answers. Reuse::

    from tests.slurm.harness import run_snakemake_slurm, slurm_cluster_fixture  # noqa: F401

    def test_toy_dag(slurm_cluster, tmp_path):
        res = run_snakemake_slurm(REPO, ["--directory", str(tmp_path), "all"], cluster=slurm_cluster)
        assert res.returncode == 0, res.output
        jobs = slurm_cluster.sacct_run(res.run_id)   # one SacctJob per SLURM job of that run
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm"
BIN = Path(sys.executable).parent

# Status checks every few seconds instead of the profile's production cadence (first check after
# 20 s), and a short latency wait: the test cluster shares this machine's file system.
FAST_ARGS = ("--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5")

RUN_ID_RE = re.compile(r"SLURM run ID: (\S+)")


def _run(cmd: Sequence[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)


def snakemake_exe() -> str:
    exe = BIN / "snakemake"
    return str(exe) if exe.exists() else (shutil.which("snakemake") or "snakemake")


@dataclass
class SacctJob:
    jobid: str
    name: str
    comment: str  # the executor plugin's "rule_<rule>[_wildcards_<...>]"
    partition: str
    account: str
    state: str
    exit_code: str
    req_tres: str
    alloc_tres: str

    @property
    def rule(self) -> str:
        return self.comment.removeprefix("rule_").split("_wildcards_")[0]


@dataclass
class SlurmCluster:
    """What the running cluster offers (discovered once per session)."""

    partitions: list[str]
    default_partition: str | None
    node_states: list[str]
    gres: list[str]
    sacct_ok: bool
    account: str | None
    env: dict[str, str] = field(default_factory=dict)

    def has_gpus(self) -> bool:
        return any("gpu" in g for g in self.gres)

    def sacct_run(
        self, run_id: str, *, wait_for: Iterable[str] = (), timeout: float = 30
    ) -> list[SacctJob]:
        """All jobs of one Snakemake run (the plugin names every job after the run ID).

        ``wait_for``: rule names that must be present in a final state (slurmdbd records jobs
        asynchronously, so right after a run the last job may still show as RUNNING).
        """
        fmt = "JobID,JobName%100,Comment%200,Partition,Account,State,ExitCode,ReqTRES%200,AllocTRES%200"
        need = set(wait_for)
        deadline = time.monotonic() + timeout
        while True:
            res = _run(
                [
                    "sacct",
                    "-X",
                    "-n",
                    "-P",
                    "--starttime",
                    "now-1days",
                    "--name",
                    run_id,
                    "--format",
                    fmt,
                ]
            )
            jobs = []
            for line in res.stdout.splitlines():
                parts = line.split("|")
                if len(parts) == 9:
                    jobs.append(SacctJob(*parts))
            final = {
                j.rule for j in jobs if j.state.split()[0] not in ("PENDING", "RUNNING", "REQUEUED")
            }
            if need <= final or time.monotonic() > deadline:
                return jobs
            time.sleep(1)


def probe_cluster() -> tuple[SlurmCluster | None, str]:
    """Return (cluster, "") when a SLURM controller answers, else (None, why not)."""
    if shutil.which("sinfo") is None:
        return (
            None,
            "no SLURM client (sinfo) on PATH; start the test cluster with tests/slurm/start-cluster.sh",
        )
    try:
        res = _run(["sinfo", "-h", "-o", "%P|%T|%G"], timeout=15)
    except subprocess.TimeoutExpired:
        return None, "sinfo did not answer within 15 s (slurmctld down?)"
    if res.returncode != 0 or not res.stdout.strip():
        return None, f"sinfo failed (rc={res.returncode}): {res.stderr.strip()[:200]}"
    partitions, states, gres, default = [], [], [], None
    for line in res.stdout.splitlines():
        part, state, g = [*line.split("|"), "", ""][:3]
        if part.endswith("*"):
            part = part[:-1]
            default = part
        partitions.append(part)
        states.append(state)
        gres.append(g)
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return None, "snakemake-executor-plugin-slurm is not installed (pip install -e '.[dev]')"
    sacct_ok = (
        _run(["sacct", "-n", "-X", "--starttime", "now-1minutes"]).returncode == 0
        if shutil.which("sacct")
        else False
    )
    account = None
    if shutil.which("sacctmgr"):
        user = _run(["id", "-un"]).stdout.strip()
        out = _run(
            ["sacctmgr", "-n", "-P", "list", "user", user, "format=defaultaccount"]
        ).stdout.strip()
        account = out.splitlines()[0] if out else None
    return SlurmCluster(partitions, default, states, gres, sacct_ok, account), ""


_PROBED: tuple[SlurmCluster | None, str] | None = None


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture() -> SlurmCluster:
    """The running SLURM cluster; skips the test when none answers."""
    global _PROBED
    if _PROBED is None:
        _PROBED = probe_cluster()
    cluster, why = _PROBED
    if cluster is None:
        pytest.skip(f"SLURM cluster not available: {why}")
    if not any(s.startswith(("idle", "mix", "alloc")) for s in cluster.node_states):
        pytest.skip(f"SLURM cluster has no usable node (states: {cluster.node_states})")
    return cluster


def slurm_env(
    cluster: SlurmCluster | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for a Snakemake run: this interpreter's bin first, R2I_SLURM_* reset."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("R2I_SLURM_")}
    env.pop("SNAKEMAKE_PROFILE", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if cluster is not None and cluster.account:
        env["R2I_SLURM_ACCOUNT"] = cluster.account
    if cluster is not None:
        env.update(cluster.env)
    env.update(extra or {})
    return env


@dataclass
class SnakemakeRun:
    returncode: int
    output: str
    run_id: str | None


def snakemake_slurm_cmd(
    args: Sequence[str] = (), *, profile: Path = PROFILE, fast: bool = True
) -> list[str]:
    return [snakemake_exe(), "--profile", str(profile), *(FAST_ARGS if fast else ()), *args]


def run_snakemake_slurm(
    workdir: Path,
    args: Sequence[str] = (),
    *,
    cluster: SlurmCluster | None = None,
    profile: Path = PROFILE,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    fast: bool = True,
) -> SnakemakeRun:
    """Run ``snakemake --profile profiles/slurm ARGS`` in ``workdir`` and wait for it.

    Returns the exit code, the combined output and the plugin's SLURM run ID (every SLURM job
    of the run carries it as job name, see ``SlurmCluster.sacct_run``).
    """
    proc = subprocess.run(
        snakemake_slurm_cmd(args, profile=profile, fast=fast),
        cwd=workdir,
        env=slurm_env(cluster, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout + proc.stderr
    m = RUN_ID_RE.search(out)
    return SnakemakeRun(proc.returncode, out, m.group(1) if m else None)


def start_snakemake_slurm(
    workdir: Path,
    args: Sequence[str] = (),
    *,
    cluster: SlurmCluster | None = None,
    profile: Path = PROFILE,
    env: dict[str, str] | None = None,
    log: Path,
) -> subprocess.Popen[bytes]:
    """Start snakemake in the background (output to ``log``); for interruption tests.

    SIGINT is reset to its default in the child: a test run started as a background job of a
    non-interactive shell (``bash -c '... &'``, nohup) inherits SIGINT *ignored*, and Python then
    installs no KeyboardInterrupt handler, so the Ctrl-C that the tests send would be lost.
    """
    with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            snakemake_slurm_cmd(args, profile=profile),
            cwd=workdir,
            env=slurm_env(cluster, env),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def squeue_ids(name: str | None = None, states: str | None = None) -> list[str]:
    """Job ids in squeue, optionally only of one run (job name) and in given states."""
    cmd = ["squeue", "-h", "-o", "%i"]
    if name:
        cmd += ["--name", name]
    if states:
        cmd += ["--states", states]
    return _run(cmd).stdout.split()


def wait_until(pred, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        val = pred()
        if val:
            return val
        time.sleep(interval)
    return pred()


def interrupt(proc: subprocess.Popen[bytes], timeout: float = 90) -> int:
    """Send SIGINT (Ctrl-C) to snakemake only and wait for it to exit."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


# ------------------------------------------------------------------------------------------
# Dry runs: the jobs Snakemake would submit, and the sbatch call the plugin would make for each
# ------------------------------------------------------------------------------------------

_JOB_HEAD = re.compile(r"^(localrule|rule|checkpoint|localcheckpoint) (\w+):$")


class JobResources(dict):
    """A job's resources with the plugin's access styles (``.get(k)`` and ``.k``)."""

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


@dataclass
class DryRunJob:
    """One job of a ``snakemake -n`` listing, with its resources as Snakemake evaluated them."""

    rule: str
    local: bool
    threads: int
    wildcards: dict[str, str]
    resources: JobResources

    @property
    def name(self) -> str:
        return self.rule

    def is_group(self) -> bool:
        return False

    def __str__(self) -> str:
        wc = ",".join(f"{k}={v}" for k, v in self.wildcards.items())
        return f"{self.rule}[{wc}]" if wc else self.rule


def _value(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def parse_dry_run(output: str) -> list[DryRunJob]:
    """The jobs of a dry run's output (Snakemake prints one block per job)."""
    jobs: list[DryRunJob] = []
    cur: DryRunJob | None = None
    for line in output.splitlines():
        m = _JOB_HEAD.match(line.strip()) if not line.startswith(" ") else None
        if m:
            cur = DryRunJob(m.group(2), m.group(1).startswith("local"), 1, {}, JobResources())
            jobs.append(cur)
            continue
        if cur is None or not line.startswith("    "):
            continue
        key, _, rest = line.strip().partition(": ")
        if key == "threads":
            cur.threads = int(rest)
        elif key == "wildcards":
            cur.wildcards = dict(kv.split("=", 1) for kv in rest.split(", ") if "=" in kv)
        elif key == "resources":
            cur.resources = JobResources(
                (k, _value(v)) for k, v in (kv.split("=", 1) for kv in rest.split(", ") if "=" in kv)
            )
    return jobs


def plugin_sbatch_args(job: DryRunJob, partitions_file: Path, account: str | None) -> list[str]:
    """The sbatch options snakemake-executor-plugin-slurm builds for ``job`` (without --wrap).

    Uses the plugin's own code: partition choice by the partition file's scoring (as with the
    profile's ``slurm-partition-config``), ``get_submit_command`` and ``set_gres_string``.
    """
    import shlex
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    class _Quiet:
        def __getattr__(self, name):
            return lambda *a, **k: None

    validate_slurm_extra(job)
    partition = job.resources.get("slurm_partition") or get_best_partition(
        read_partition_file(partitions_file), job, _Quiet()
    )
    settings = SimpleNamespace(requeue=False, no_requeue=True, qos=None, reservation=None)
    params = {
        "run_uuid": "r2i-sbatch-test-only",
        "slurm_logfile": "/dev/null",
        "comment_str": f"rule_{job.rule}",
        "account": f"-A {shlex.quote(account)}" if account else "",
        "partition": f"-p {shlex.quote(str(partition))}" if partition else "",
        "workdir": "/tmp",
    }
    call = get_submit_command(job, params, settings=settings) + set_gres_string(job)
    args = shlex.split(call)
    assert args[:2] == ["sbatch", "--parsable"], call
    return args[2:]


def sbatch_test_only(args: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``sbatch --test-only ARGS --wrap true``: slurmctld checks the request, nothing runs."""
    return _run(["sbatch", "--test-only", *args, "--wrap", "true"], timeout=timeout)
