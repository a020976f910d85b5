"""Environment of the benchmark runs.

The SLURM executor plugin runs ``scontrol show config`` whenever Snakemake starts (it computes
the default of ``--slurm-status-command``), also for local runs. On a machine that has SLURM's
client tools and a ``slurm.conf`` but no running ``slurmctld`` (this project's development
machines between test-cluster runs), that call blocks ~9 s before it gives up, at every Snakemake
start. A workstation without SLURM (the call fails at once) or a cluster login node (it answers at
once) does not pay this, so the benchmarks measure without it: when the call is slow, they put a
stand-in ``scontrol`` that fails at once first on ``PATH`` and say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def _scontrol_is_slow() -> bool:
    if shutil.which("scontrol") is None:
        return False
    t0 = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=3)
    except subprocess.TimeoutExpired:
        return True
    return time.perf_counter() - t0 > 1.0


def bench_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` with the stand-in ``scontrol`` on PATH when the real one would block."""
    env = dict(base)
    if _scontrol_is_slow():
        shim = Path(tempfile.mkdtemp(prefix="r2i-bench-shim-"))
        (shim / "scontrol").write_text("#!/bin/sh\n# stand-in: no SLURM controller here\nexit 1\n")
        (shim / "scontrol").chmod(0o755)
        env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
        print("note: `scontrol show config` blocks here (SLURM tools, no controller running); "
              "Snakemake runs with a stand-in scontrol that fails at once, as on a machine "
              "without SLURM")
    return env
