"""Make the workflow's own library (``workflow/r2i``) importable in a rule script, wherever it runs.

A rule script runs in the Python of the Snakemake that started it (no ``--sdm``), in a conda env
Snakemake created from ``envs/<env>.yaml`` (``--sdm conda``) or in an Apptainer image built from
``envs/<env>.def`` (``--sdm apptainer``). None of these install the project: a conda env file cannot
name the checkout (Snakemake copies it to ``.snakemake/conda/`` before conda reads it, so ``-e ../``
would point there), and an image with a copy of the library would run stale code after every edit.
So every script takes the library from the checkout it belongs to, which is what the workflow
itself (``rules/common.smk``) does too. (Snakemake appends the host Python's ``sys.path`` to a
script's, which may include a checkout, but last, after the env's own packages, and not for the
processes the job starts.) Processes a job starts (launched model servers, verl and its Ray
workers, which import ``r2i.reward``) find it through ``PYTHONPATH``; the simulator's command
``r2i-sim-server`` is found on ``PATH`` (``scripts/bin``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _prepend(var: str, value: str) -> None:
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p and p != value]
    os.environ[var] = os.pathsep.join([value, *parts])


def use_checkout(script: str) -> Path:
    """Put ``<checkout>/workflow`` first on ``sys.path`` (``script``: the rule script's ``__file__``).

    Fails with what to do when the checkout is not visible, e.g. inside a container that does not
    mount it (Snakemake mounts only the working directory as the container's home).
    """
    root = Path(script).resolve().parents[1]
    lib = root / "workflow"
    if not (lib / "r2i" / "__init__.py").is_file():
        raise RuntimeError(
            f"the workflow library is not visible at {lib} in this job (Python {sys.executable}). "
            "Run Snakemake from the repository root (under --sdm apptainer the working directory "
            "is the only host folder mounted besides Snakemake's own), or mount the checkout, "
            f'e.g. --apptainer-args "--nv --bind {root}".'
        )
    sys.path[:] = [str(lib)] + [p for p in sys.path if p != str(lib)]
    _prepend("PYTHONPATH", str(lib))
    _prepend("PATH", str(root / "scripts" / "bin"))
    return lib
