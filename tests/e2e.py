"""Helpers for end-to-end runs of the real workflow on the toy world (test doubles as models)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SENTINEL = "sk-SENTINEL-7f3a9c2e-do-not-leak"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["R2I_TEST_API_KEY"] = SENTINEL
    return e


def tiny_config(workdir: Path, *, base_url: str | None = None, **overrides: Any) -> Path:
    """A complete config (it replaces the default) for a tiny toy world and 2 shards."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["toy_world"]["size"] = "tiny"
    cfg["toy_world"]["short_side"] = 2000
    cfg["manifest"]["shards"] = 2
    cfg["cache_dir"] = str(workdir / "cache")
    sim = cfg["endpoints"]["sim"]
    sim["api_key_env"] = "R2I_TEST_API_KEY"
    if base_url:
        sim.pop("launch")
        sim["base_url"] = base_url
    else:
        sim["launch"] = (
            "r2i-sim-server --host 127.0.0.1 --port {port} --world resources/toy --latency 0 "
            "--teacher-error-rate 0.1 --seed 0 --api-key-env R2I_TEST_API_KEY"
        )
    for dotted, value in overrides.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = workdir / "test-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-c", "2",
           "--rerun-incomplete", *args]
    if config:
        cmd += ["--configfile", str(config)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}")
    return res


def start_snakemake(workdir: Path, config: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-c", "2",
           "--rerun-incomplete", "--configfile", str(config), *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            env=env(), start_new_session=True)


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the whole process group: snakemake, its jobs and anything they launched."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for(cond: Callable[[], bool], timeout: float, proc: subprocess.Popen[str] | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimServer:
    """A simulator process started by the test itself, so the test can read its request counters."""

    def __init__(self, world: Path | None, log: Path, *, latency: float = 0.002,
                 max_concurrency: int = 0, extra: tuple[str, ...] = ()) -> None:
        """``world=None``: the echo brain (no toy world), for client-level tests; ``extra``:
        more ``r2i-sim-server`` flags (faults, jitter)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "w")  # noqa: SIM115
        brain = ["--world", str(world), "--teacher-error-rate", "0.1"] if world is not None else []
        self.proc = subprocess.Popen(
            [str(BIN / "r2i-sim-server"), "--host", "127.0.0.1", "--port", str(self.port),
             *brain, "--latency", str(latency), "--seed", "0",
             "--api-key-env", "R2I_TEST_API_KEY", "--max-concurrency", str(max_concurrency), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env(),
        )  # fmt: skip
        if not wait_for(self._healthy, 60, self.proc):
            raise RuntimeError(f"simulator did not start; see {log}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=5) as r:
            return json.loads(r.read())

    def requests(self) -> int:
        return int(self.stats()["requests"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def cache_entries(cache_dir: Path) -> int:
    return sum(1 for _ in cache_dir.glob("*/*.json")) if cache_dir.exists() else 0


def dataset_rows(workdir: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    out = {}
    for split in ("train", "val"):
        for row in pq.read_table(workdir / "results" / "toy" / "dataset" / f"{split}.parquet").to_pylist():
            out[row["extra_info"]["item_id"]] = row
    return out


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
