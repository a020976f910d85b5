#!/usr/bin/env python3
"""Lock the software environments: envs/<env>.in -> envs/locks/<env>.linux-64.txt -> envs/<env>.yaml.

Why this exists: an environment that pins a dozen of its ~200 packages is a different environment
every month. Each environment here is written as a short list of direct requirements
(``envs/<env>.in``); this tool resolves it, together with the library's own requirements
(``pyproject.toml`` ``[project.dependencies]``, without snakemake) and under the constraints of the
running Snakemake's own requirements (a job's Python imports the host's Snakemake, which then uses
the environment's copies of e.g. tenacity), into a fully pinned, hash-checked lock for one platform
(``envs/locks/<env>.linux-64.txt``, ``uv pip compile`` against PyPI). From the lock it writes:

* ``envs/<env>.yaml``: the conda environment Snakemake creates under ``--sdm conda``: Python and pip
  from conda-forge, and every package of the lock as a pip requirement with its hashes, so pip
  installs exactly the locked files. It names no local path: Snakemake copies the file to
  ``.snakemake/conda/<hash>.yaml`` before conda reads it, so a relative path would resolve there.
* ``envs/<env>.post-deploy.sh`` for environments with packages that must be compiled against the
  installed torch (``BUILD_AFTER``, e.g. flash-attn, kept in ``envs/locks/<env>.linux-64.build.txt``):
  Snakemake runs it in the new environment.

The Apptainer definitions (``envs/<env>.def``) install from the same lock. The conda side (Python,
pip and what conda-forge's python depends on) is pinned by version only: conda-forge cannot be
reached where this was written, so it is not solved into an explicit lock (see docs/cluster.md).

Usage (needs ``uv`` and PyPI)::

    python envs/lock.py            # re-lock every environment
    python envs/lock.py gpu        # one environment
    python envs/lock.py --check    # offline: are the .yaml/.post-deploy.sh files what the locks give?
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ENVS_DIR = Path(__file__).resolve().parent
REPO = ENVS_DIR.parent
LOCKS_DIR = ENVS_DIR / "locks"

# The conda side of every environment (conda-forge). Patch releases, not just 3.12.
PYTHON = "3.12.11"
PIP = "24.2"
CHANNELS = ["conda-forge", "nodefaults"]
# The one platform locked: Linux x86_64 with glibc >= 2.31 (Ubuntu >= 20.04, RHEL/Rocky >= 9): the
# oldest glibc for which every locked package but a few pure-Python sdists (and flash-attn) has a
# wheel (vLLM's llguidance ships manylinux_2_31 wheels only; on glibc 2.28 pip would compile it).
PLATFORM = "linux-64"
UV_PLATFORM = "x86_64-manylinux_2_31"
INDEX_URL = "https://pypi.org/simple"

# What each environment is for (the header of its .yaml).
ENVS: dict[str, str] = {
    "cpu": "CPU rules: toy world, manifest, synthesis without vLLM/SAM3, dataset, eval_metrics, "
    "evaluate against base_url/simulated endpoints, report",
    "gpu": "GPU rules: synthesis and evaluate with launched vLLM endpoints, SAM3 segmentation, "
    "attention, tiny_vlm",
    "training": "train (verl GRPO with vLLM rollouts) and merge",
}
# Packages that compile against the environment's torch: installed after the rest, without build
# isolation (pip would otherwise build them in a fresh environment that has no torch).
BUILD_AFTER: dict[str, set[str]] = {"training": {"flash-attn"}}

# The snakemake distributions whose requirements constrain every environment.
SNAKEMAKE_DISTS = ("snakemake",)
SNAKEMAKE_PREFIX = "snakemake-interface-"


@dataclass
class Locked:
    """One package of a lock: canonical name, exact version, the hashes of its files."""

    name: str
    version: str
    hashes: list[str] = field(default_factory=list)

    def requirement(self, with_hashes: bool = True) -> str:
        line = f"{self.name}=={self.version}"
        if with_hashes:
            line += "".join(f" --hash={h}" for h in self.hashes)
        return line


def target_environment() -> dict[str, str]:
    """Marker environment of the locked platform (for evaluating requirement markers)."""
    env = dict(default_environment())
    env.update(
        python_version=".".join(PYTHON.split(".")[:2]),
        python_full_version=PYTHON,
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def applies(req: Requirement, extras: tuple[str, ...] = ("",)) -> bool:
    if req.marker is None:
        return True
    env = target_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras)


def library_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[Requirement]:
    """The library's runtime requirements for the locked platform, without snakemake itself."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps]
    return [r for r in reqs if canonicalize_name(r.name) != "snakemake" and applies(r)]


def snakemake_requirements() -> list[Requirement]:
    """Requirements of the installed snakemake and snakemake-interface-* packages.

    A job's script runs in the environment's Python but imports the host's Snakemake (Snakemake
    appends its own search path), which then picks up the environment's copies of the packages it
    shares with it: their versions must satisfy Snakemake's requirements.
    """
    out: list[Requirement] = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in SNAKEMAKE_DISTS or name.startswith(SNAKEMAKE_PREFIX):
            if name.startswith("snakemake-executor-plugin") or name.startswith("snakemake-storage"):
                continue
            out += [r for r in map(Requirement, dist.requires or []) if applies(r)]
    return out


def read_in(env: str) -> list[Requirement]:
    lines = (ENVS_DIR / f"{env}.in").read_text().splitlines()
    return [Requirement(ln.strip()) for ln in lines if ln.strip() and not ln.startswith("#")]


def lock_path(env: str) -> Path:
    """The lock of ``env``: everything that installs from wheels (or plain sdists) in one step."""
    return LOCKS_DIR / f"{env}.{PLATFORM}.txt"


def build_lock_path(env: str) -> Path:
    """The rest of the lock of ``env``: BUILD_AFTER packages, installed without build isolation."""
    return LOCKS_DIR / f"{env}.{PLATFORM}.build.txt"


def split_lock(text: str, after: set[str]) -> tuple[str, str]:
    """Split uv's output into (the main lock, the BUILD_AFTER packages), each a requirements file."""
    head, *blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", text)
    main, build = [head], []
    for block in blocks:
        name = canonicalize_name(re.split(r"[=\[\s]", block, maxsplit=1)[0])
        (build if name in after else main).append(block)
    missing = after - set(parse_lock("".join(build)))
    if missing:
        raise SystemExit(f"BUILD_AFTER packages not in the resolution: {sorted(missing)}")
    return "".join(main), (head + "".join(build)) if build else ""


def parse_lock(text: str) -> dict[str, Locked]:
    """Packages of a ``uv pip compile --generate-hashes`` requirements file, by canonical name."""
    joined = re.sub(r"\\\n", " ", text)
    out: dict[str, Locked] = {}
    for raw in joined.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ValueError(f"unexpected option line in lock: {line!r}")
        spec, *opts = line.split()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", spec)
        if not m:
            raise ValueError(f"lock line is not name==version: {line!r}")
        hashes = [o.removeprefix("--hash=") for o in opts if o.startswith("--hash=")]
        name = canonicalize_name(m.group(1))
        out[name] = Locked(name, m.group(3), hashes)
    return out


def read_lock(env: str, part: str = "all") -> dict[str, Locked]:
    """Packages of the lock of ``env``: ``main``, ``build`` (BUILD_AFTER) or ``all``."""
    out: dict[str, Locked] = {}
    if part in ("main", "all"):
        out.update(parse_lock(lock_path(env).read_text()))
    if part in ("build", "all") and build_lock_path(env).is_file():
        out.update(parse_lock(build_lock_path(env).read_text()))
    return out


def compile_lock(env: str) -> str:
    """Resolve ``env`` with uv against PyPI; returns the lock text."""
    reqs = [str(r) for r in read_in(env)] + [str(r) for r in library_requirements()]
    constraints = [str(r) for r in snakemake_requirements() if r.specifier]
    with tempfile.TemporaryDirectory() as tmp:
        req_file = Path(tmp) / f"{env}.requirements.in"
        con_file = Path(tmp) / "snakemake.constraints.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        con_file.write_text("\n".join(constraints) + "\n")
        cmd = [
            "uv", "pip", "compile", str(req_file), "--constraint", str(con_file),
            "--python-version", PYTHON, "--python-platform", UV_PLATFORM,
            "--generate-hashes", "--index-url", INDEX_URL, "--no-header", "--annotation-style", "line",
            "--quiet",
        ]  # fmt: skip
        env_vars = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env_vars)
    body = out.stdout.replace(str(req_file), f"envs/{env}.in + pyproject.toml")
    body = body.replace(str(con_file), "snakemake's requirements")
    header = (
        f"# Lock of envs/{env}.in (+ the library's requirements from pyproject.toml), Python {PYTHON},\n"
        f"# {PLATFORM} ({UV_PLATFORM}), from {INDEX_URL}, constrained by the requirements of\n"
        f"# snakemake {metadata.version('snakemake')}. Generated by `python envs/lock.py {env}` (uv pip "
        "compile); do not edit.\n"
    )
    return header + body


def render_yaml(env: str, lock: dict[str, Locked]) -> str:
    """The conda environment file for ``env``: conda side pinned, pip side = the main lock."""
    after = BUILD_AFTER.get(env, set())
    lines = [
        f"# {ENVS[env]}.",
        f"# GENERATED by `python envs/lock.py {env}` from envs/{env}.in and",
        f"# envs/locks/{env}.{PLATFORM}.txt: edit the .in file and re-lock; do not edit by hand.",
        "# The pip side is the whole lock, hash-checked; the conda side (conda-forge) is pinned by",
        "# version only (not solved into an explicit lock here, see docs/cluster.md).",
    ]
    if after:
        lines.append(
            f"# Installed afterwards by envs/{env}.post-deploy.sh (compiled against torch): "
            + ", ".join(sorted(after))
            + "."
        )
    lines += [
        f"name: r2i-{env}",
        "channels:",
        *[f"  - {c}" for c in CHANNELS],
        "dependencies:",
        f"  - python={PYTHON}",
        f"  - pip={PIP}",
        "  - pip:",
    ]
    for name in sorted(lock):
        lines.append(f"      - {lock[name].requirement()}")
    return "\n".join(lines) + "\n"


def render_post_deploy(env: str, build: dict[str, Locked]) -> str | None:
    """Snakemake's post-deploy script for ``env`` (None when nothing is built afterwards)."""
    after = sorted(build)
    if not after:
        return None
    reqs = "\n".join(build[n].requirement() for n in after)
    return f"""#!/usr/bin/env bash
# GENERATED by `python envs/lock.py {env}`; do not edit by hand.
# Snakemake runs this once in the newly created conda env of envs/{env}.yaml (--sdm conda).
# {", ".join(after)}: no wheel on PyPI; compiled against the env's torch, which pip cannot do in the
# same step that installs torch (build isolation). Needs a CUDA toolkit (nvcc) matching the torch
# build (e.g. `module load cuda/13.0` before creating the envs) and takes about 30 minutes with
# MAX_JOBS=8. TORCH_CUDA_ARCH_LIST defaults to Hopper (9.0); set it for other GPUs.
set -euo pipefail
if ! command -v nvcc >/dev/null 2>&1; then
    echo "envs/{env}.post-deploy.sh: nvcc not found: {", ".join(after)} must be compiled with a CUDA" \\
         "toolkit; load one (e.g. module load cuda/13.0) and create the env again, or use the image" \\
         "envs/{env}.def (--sdm apptainer)" >&2
    exit 1
fi
export TORCH_CUDA_ARCH_LIST="${{TORCH_CUDA_ARCH_LIST:-9.0}}" MAX_JOBS="${{MAX_JOBS:-8}}"
# build from the hash-checked sdist; never fetch a prebuilt wheel that the lock does not name
export FLASH_ATTENTION_FORCE_BUILD="${{FLASH_ATTENTION_FORCE_BUILD:-TRUE}}"
reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
cat > "$reqs" <<'LOCK'
{reqs}
LOCK
python -m pip install --no-deps --require-hashes --no-build-isolation --no-cache-dir -r "$reqs"
"""


def outputs(env: str) -> dict[Path, str | None]:
    """Files generated from the lock of ``env``: path -> expected content (None: must not exist)."""
    return {
        ENVS_DIR / f"{env}.yaml": render_yaml(env, read_lock(env, "main")),
        ENVS_DIR / f"{env}.post-deploy.sh": render_post_deploy(env, read_lock(env, "build")),
    }


def write_outputs(env: str) -> None:
    for path, content in outputs(env).items():
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
            if path.suffix == ".sh":
                path.chmod(0o755)


def check() -> list[str]:
    """Offline: generated files that differ from what their lock gives."""
    problems = []
    for env in ENVS:
        if not lock_path(env).is_file():
            problems.append(f"{lock_path(env).relative_to(REPO)} is missing")
            continue
        for path, content in outputs(env).items():
            have = path.read_text() if path.exists() else None
            if have != content:
                problems.append(
                    f"{path.relative_to(REPO)} is not what envs/lock.py writes from its lock"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("envs", nargs="*", help=f"environments to lock (default: {' '.join(ENVS)})")
    parser.add_argument("--check", action="store_true", help="only check, offline")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        print("\n".join(problems) or "envs: all generated files match their locks")
        return 1 if problems else 0
    for env in args.envs or list(ENVS):
        if env not in ENVS:
            parser.error(f"unknown environment {env!r} (known: {', '.join(ENVS)})")
        print(f"locking {env} ...", file=sys.stderr, flush=True)
        LOCKS_DIR.mkdir(exist_ok=True)
        main_text, build_text = split_lock(compile_lock(env), BUILD_AFTER.get(env, set()))
        lock_path(env).write_text(main_text)
        if build_text:
            build_lock_path(env).write_text(build_text)
        else:
            build_lock_path(env).unlink(missing_ok=True)
        write_outputs(env)
        print(f"  {len(read_lock(env))} packages -> {lock_path(env).relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
