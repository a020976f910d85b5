"""Shared fixtures. The simulated models and toy world used here are test doubles."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake_cmd() -> list[str]:
    exe = BIN / "snakemake"
    return [str(exe)] if exe.exists() else [shutil.which("snakemake") or "snakemake"]


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def env_with_bin() -> dict[str, str]:
    """Environment whose PATH starts with this interpreter's bin (r2i-sim-server, snakemake)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env
