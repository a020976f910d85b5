"""Recovery after SIGKILL, with exactly the README's commands (issue 12; issue 13 point 7).

The real workflow runs in a copy of the checkout (as a user's clone), on the embedded default
config (toy world, launched simulator: the simulated models are test doubles) with the smallest
toy world, building the training set (the ``synthesis`` target). It is killed with SIGKILL at
three points:

* a single job that is talking to the model server it launched (Snakemake retries it by itself,
  because the workflow profile ``profiles/default`` sets ``retries``);
* Snakemake and all its jobs at once (what a lost node or ``kill -9 -PGID`` does);
* during the recovery, Snakemake itself, alone: its running jobs finish on their own as orphans;

and recovered with the README's commands: ``snakemake --unlock``, then the same command again.
Checked: nothing lost and nothing duplicated (the dataset equals a clean run's), no completed
model call re-sent, no model-server process left, and every output with its provenance record so
that a later settings change plans every shard.

"No completed call re-sent" is measured on the call cache: every completed call is one file, and
sending a call again would write its file again (a new inode via rename). So every cache file
present at the kill must still be the same inode after recovery, and the final number of cache
files must equal a clean run's.

Behaviour only (outputs, counts, processes): no rule names or job counts, so the checks hold
whether synthesis runs as one rule per stage or one rule per shard.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The kill test runs the workflow about twice, plus the clean run.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHECKOUT = ["Snakefile", "rules", "config", "profiles", "scripts", "workflow", "envs", "report"]
# A README command (the training set: the `synthesis` target that `r2i synthesize` asks for),
# with the smallest toy world (`--config` is part of what users type).
RUN = ["snakemake", "-c", "2", "synthesis", "--config", "toy_world={size: tiny}"]
UNLOCK = ["snakemake", "--unlock"]
SHARDS = 4  # the default config's manifest.shards


# ------------------------------------------------------------------------------ helpers
class Checkout:
    """A copy of the repository's workflow files, where the README's commands are typed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        for name in CHECKOUT:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.egg-info", ".snakemake"))
            else:
                shutil.copy2(src, root / name)
        self.marker = f"R2I_RECOVERY_TEST={uuid.uuid4().hex}"
        name, value = self.marker.split("=")
        self.env = dict(os.environ, **{name: value})
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"

    def run(self, cmd: list[str], timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        assert res.returncode == 0, (f"{' '.join(cmd)} failed ({res.returncode}):\n"
                                     f"{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
        return res

    def start(self, cmd: list[str]) -> subprocess.Popen[str]:
        log = open(self.root / "snakemake-run.log", "a")  # noqa: SIM115
        return subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    @property
    def results(self) -> Path:
        return self.root / "results" / "toy"

    @property
    def cache(self) -> Path:
        return self.root / ".r2i-cache"

    def processes(self) -> dict[int, tuple[int, str]]:
        """pid -> (ppid, command line) of live processes started for this checkout."""
        needle = self.marker.encode()
        out: dict[int, tuple[int, str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle not in fh.read():
                        continue
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fields[0] != b"Z":
                out[int(entry)] = (int(fields[1]), cmd)
        return out

    def servers(self) -> list[int]:
        return [p for p, (_, cmd) in self.processes().items() if "r2i-sim-server" in cmd]

    def kill_all(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_for(cond: Callable[[], Any], timeout: float, what: str,
             proc: subprocess.Popen[str] | None = None) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before: {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")


def job_with_server(co: Checkout) -> int | None:
    """A running job process (a rule script) that has a model server among its descendants."""
    procs = co.processes()
    for pid, (_, cmd) in procs.items():
        if "r2i-sim-server" not in cmd:
            continue
        p = pid
        while p in procs:
            p = procs[p][0]
            if p in procs and ".snakemake/scripts/" in procs[p][1]:
                return p
    return None


def cache_files(cache: Path) -> dict[str, tuple[int, int]]:
    """Cache file -> (inode, mtime_ns): a call sent again would write its file again."""
    out = {}
    for f in cache.glob("*/*.json"):
        st = f.stat()
        out[f.name] = (st.st_ino, st.st_mtime_ns)
    return out


def dataset(co: Checkout) -> dict[str, tuple[Any, ...]]:
    import pyarrow.parquet as pq

    rows: dict[str, tuple[Any, ...]] = {}
    for split in ("train", "val"):
        for r in pq.read_table(co.results / "dataset" / f"{split}.parquet").to_pylist():
            item = r["extra_info"]["item_id"]
            assert item not in rows, f"item {item} is in the dataset twice"
            rows[item] = (split, r["reward_model"]["ground_truth"], tuple(r["extra_info"]["options"]),
                          r["images"][0]["bytes"])
    return rows


def metadata_key(state: Path, subject: str, path: str) -> Path:
    return state / subject / base64.urlsafe_b64encode(path.encode()).decode()


def outputs_without_provenance(co: Checkout) -> list[str]:
    """Result files (or their output folder) without a Snakemake metadata record."""
    state = co.root / ".snakemake"
    missing = []
    for f in sorted(co.results.rglob("*")):
        rel = f.relative_to(co.root)
        if not f.is_file() or f.name.startswith("."):
            continue
        if rel.parts[2:3] == ("manifest",) and rel.parts[3:4] in (("state",), ("shards",)):
            continue  # the manifest's own state and shard lists are not rule outputs
        chain = [rel, *rel.parents]
        if not any(metadata_key(state, "metadata", str(p)).exists() for p in chain[:-1]):
            missing.append(str(rel))
    return missing


def shards_planned_after_a_settings_change(co: Checkout) -> set[str]:
    """Change a per-shard synthesis setting in config/config.yaml; the shards the dry run plans."""
    cfg = co.root / "config" / "config.yaml"
    original = cfg.read_text()
    try:
        cfg.write_text(original + "\nsynthesis:\n  crops:\n    upscale: 2.5\n")
        res = co.run([*RUN, "-n"])
    finally:
        cfg.write_text(original)
    return set(re.findall(r"wildcards: shard=(\d+)", res.stdout))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """An uninterrupted run: what every recovered run must equal."""
    co = Checkout(tmp_path_factory.mktemp("recovery") / "clean")
    try:
        co.run(RUN)
        assert not co.servers()
        yield co
    finally:
        co.kill_all()


def assert_recovered_like(co: Checkout, clean: Checkout, at_kill: dict[str, tuple[int, int]]) -> None:
    assert dataset(co) == dataset(clean), "items lost, added or changed"
    after = cache_files(co.cache)
    resent = sorted(k for k, v in at_kill.items() if after.get(k) != v)
    assert not resent, f"{len(resent)} completed call(s) were sent again"
    assert len(after) == len(cache_files(clean.cache)), "calls sent that a clean run does not send"
    assert not co.servers(), f"model servers left running: {co.servers()}"
    assert not outputs_without_provenance(co), outputs_without_provenance(co)


# ------------------------------------------------------------------------------ the test
def test_kill_at_three_points_and_recover_with_the_readme_commands(clean: Checkout,
                                                                   tmp_path: Path) -> None:
    """SIGKILL one job (Snakemake retries it), then Snakemake with all its jobs (a lost node),
    recover; during the recovery SIGKILL Snakemake alone (its jobs finish as orphans), recover
    again. Each recovery is `snakemake --unlock`, then the same command."""
    co = Checkout(tmp_path / "co")
    try:
        proc = co.start(RUN)
        # 1. A job in the middle of its model calls: SIGKILL it alone. Its server dies with it
        #    and Snakemake retries the job by itself (retries from profiles/default).
        job = wait_for(lambda: co.cache.exists() and cache_files(co.cache) and job_with_server(co),
                       900, "a job talking to its launched server", proc)
        servers = co.servers()
        os.kill(job, signal.SIGKILL)
        wait_for(lambda: not set(servers) & set(co.servers()), 20,
                 "the killed job's model server to exit")

        # 2. After the retry made progress: SIGKILL Snakemake and all its jobs at once (what a
        #    lost node or `kill -9 -PGID` does). Every server dies with its job.
        n_calls = len(cache_files(co.cache))
        wait_for(lambda: len(cache_files(co.cache)) > n_calls and job_with_server(co), 900,
                 "new model calls after the retry", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not co.processes(), 20, "every process of the run to be gone")
        at_kill_2 = cache_files(co.cache)
        assert at_kill_2

        co.run(UNLOCK)
        proc = co.start(RUN)
        # 3. During the recovery: SIGKILL Snakemake alone while a job talks to its server. Its
        #    jobs go on as orphans and finish by themselves (stopping their servers).
        n_calls = len(cache_files(co.cache))
        wait_for(lambda: len(cache_files(co.cache)) > n_calls and job_with_server(co), 900,
                 "new model calls in the recovery run", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not co.processes(), 600, "the orphaned jobs to finish")
        # On a cluster the job's own Snakemake clears the incomplete mark of what it wrote and
        # records no provenance (only the killed main process would have): leave that state.
        cleared = 0
        for marker in (co.root / ".snakemake" / "incomplete").glob("*"):
            path = base64.urlsafe_b64decode(marker.name).decode()
            if (co.root / path).exists():
                marker.unlink()
                cleared += 1
        assert cleared, "no orphaned job finished an output after Snakemake was killed"
        at_kill_3 = cache_files(co.cache)
        assert {k: at_kill_3.get(k) for k in at_kill_2} == at_kill_2, "calls were sent again"

        co.run(UNLOCK)
        final = co.run(RUN)
        assert "no Snakemake provenance record" in final.stderr  # rebuilt, not trusted
        assert_recovered_like(co, clean, at_kill_3)
        assert shards_planned_after_a_settings_change(co) == {f"{i:03d}" for i in range(SHARDS)}
    finally:
        co.kill_all()


def test_plain_commands_read_the_default_profile() -> None:
    """`snakemake -c N` alone gets rerun-incomplete and retries (profiles/default); with
    `--profile profiles/slurm` or `profiles/local` the same values hold and the site keys of
    those profiles are kept (a workflow profile overrides a --profile per key)."""
    code = ("import sys, json; from snakemake.cli import parse_args; "
            "p, a = parse_args(sys.argv[1:]); "
            "print(json.dumps({'retries': a.retries, 'rerun_incomplete': a.rerun_incomplete, "
            "'keep_going': a.keep_going, 'latency_wait': a.latency_wait, 'cores': a.cores}))")
    import json

    def args(*extra: str) -> dict[str, Any]:
        res = subprocess.run([sys.executable, "-c", code, "-c", "2", *extra], cwd=REPO,
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])

    plain = args()
    assert plain["retries"] == 2 and plain["rerun_incomplete"] and plain["keep_going"]
    slurm = args("--profile", "profiles/slurm")
    assert slurm["retries"] == 2 and slurm["rerun_incomplete"] and slurm["latency_wait"] == 60
    local = args("--profile", "profiles/local")
    assert local["retries"] == 2 and local["rerun_incomplete"]
    assert "does not read" in (REPO / "profiles/local/config.yaml").read_text().lower() or \
        "not read" in (REPO / "profiles/local/config.yaml").read_text().lower()
