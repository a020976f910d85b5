"""Software environments: what Snakemake makes of every rule's env and container, the locks.

Nothing is built or installed here (no conda-forge, no apptainer on this machine). The checks:

* what Snakemake itself resolves for each rule and job (its API, ``tests/envs_probe.py``), for the
  embedded default and for configs that launch vLLM, use SAM3 or only reach remote endpoints:
  every rule has an env and a container, the container is the image built from that env, a rule
  that launches vLLM or runs SAM3 gets an env (and image) whose lock has them;
* every env file as Snakemake resolves it (the rule file's path, and the copy under
  ``.snakemake/conda/`` that conda reads): no path in it points nowhere;
* the locks: every package pinned and hash-checked, the env files and the post-deploy script are
  what ``envs/lock.py`` writes from them, the library's and Snakemake's requirements hold, every
  third-party module a rule's script imports is in its env's lock;
* the Apptainer definitions install exactly their lock and check what their rules import;
* a rule script runs in a Python that has the dependencies but not the project (as in a conda
  env or an image), and the simulator's command is found there.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
PY = sys.executable

_spec = importlib.util.spec_from_file_location("r2i_envs_lock", ENVS / "lock.py")
assert _spec and _spec.loader
lock = importlib.util.module_from_spec(_spec)
sys.modules["r2i_envs_lock"] = lock
_spec.loader.exec_module(lock)

ENV_NAMES = sorted(lock.ENVS)
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

# What a job needs from its env beyond the library, by what it does (issue 13 point 4):
# SAM3 imports torch, torchvision and psutil at module level without declaring them.
NEEDS_VLLM = {"vllm"}
NEEDS_SAM3 = {"sam3", "torch", "torchvision", "psutil"}
RULE_NEEDS = {
    "attention": {"torch", "transformers"},
    "tiny_vlm": {"torch", "transformers", "tokenizers"},
    "train": {"verl", "vllm", "torch", "ray", "flash-attn"},
    "merge": {"verl", "torch"},
}
# Third-party modules r2i imports only inside the functions of one feature: required by the
# checks above (RULE_NEEDS, vLLM/SAM3), not of every env that imports the module defining them.
FEATURE_MODULES = {"sam3", "torch", "transformers", "tokenizers", "ray", "vllm", "verl"}
# import name -> distribution, for modules not installed on the development machine
MODULE_DIST = {"sam3": "sam3", "vllm": "vllm", "verl": "verl", "ray": "ray", "flash_attn": "flash-attn"}


def canon(name: str) -> str:
    return canonicalize_name(name)


@cache
def locked(env: str) -> dict[str, Any]:
    """The locked packages of ``env`` ({} for an env without a lock: it has nothing pinned)."""
    return lock.read_lock(env) if lock.lock_path(env).is_file() else {}


@cache
def _load_yaml(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def env_yaml(env: str) -> dict[str, Any]:
    return _load_yaml(ENVS / f"{env}.yaml")


# --------------------------------------------------------------------------------------------
# What Snakemake resolves (its API, in a separate process)
# --------------------------------------------------------------------------------------------

VLLM_TEACHER = (
    "vllm serve /models/Qwen3-VL-235B-A22B-Instruct --served-model-name qwen3-vl-235b "
    "--host 127.0.0.1 --port {port} --tensor-parallel-size 8"
)
VLLM_STUDENT = (
    "python -m vllm.entrypoints.openai.api_server --model /models/Qwen3-VL-8B-Instruct "
    "--served-model-name qwen3-vl-8b --host 127.0.0.1 --port {port}"
)


def _variant(name: str) -> dict[str, Any]:
    """The embedded default, changed the way a user would for real models."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    eps, models = cfg["endpoints"], cfg["models"]
    if name == "gpu_mix":  # launched vLLM teacher and student/judge, a remote teacher_b, SAM3
        eps["big"] = {"launch": VLLM_TEACHER, "gpus": 8, "startup_timeout_s": 3600}
        eps["small"] = {"launch": VLLM_STUDENT, "gpus": 1}
        eps["remote"] = {"base_url": "http://gateway.example:8000/v1", "api_key_env": "GW_KEY"}
        models["teacher"]["endpoint"] = "big"
        models["teacher_b"]["endpoint"] = "remote"
        models["student"]["endpoint"] = models["judge"]["endpoint"] = "small"
        cfg["segmenter"] = {"backend": "sam3", "sam3": {"checkpoint": "/models/sam3/sam3.pt"}}
        # 8 + 1 + SAM3 GPUs in the synthesize job: a 16-GPU node (a job must fit one node)
        cfg["cluster"] = {"node": {"gpus": 16, "cpus": 192, "mem_mb": 2_000_000}}
        cfg["evaluation"] = {
            **cfg.get("evaluation", {}),
            "models": {"qwen3-vl-8b": {"endpoint": "small", "model": "qwen3-vl-8b"}},
            "judge": {"endpoint": "small", "model": "qwen3-vl-8b"},
        }
    elif name == "remote":  # every model behind running servers: no GPU software in any job
        eps["remote"] = {"base_url": "http://gateway.example:8000/v1"}
        for role in models:
            models[role]["endpoint"] = "remote"
        cfg["evaluation"] = {
            **cfg.get("evaluation", {}),
            "models": {"served": {"endpoint": "remote", "model": "qwen3-vl-8b"}},
            "judge": {"endpoint": "remote", "model": "judge"},
        }
    elif name == "sam3_only":  # simulated models, SAM3 segmenter
        cfg["segmenter"] = {"backend": "sam3", "sam3": {"checkpoint": "/models/sam3/sam3.pt"}}
    else:
        assert name == "default"
    return cfg


def _start_probe(name: str, root: Path) -> subprocess.Popen[str]:
    workdir = root / name
    (workdir / "envs").mkdir(parents=True)
    # the default software.container is envs/{env}.sif in the working directory; under
    # --sdm apptainer a missing image is an error (test below), so stand-ins exist here
    for env in ENV_NAMES:
        (workdir / "envs" / f"{env}.sif").write_bytes(b"")
    args = [PY, str(REPO / "tests" / "envs_probe.py"), str(workdir), "--sdm", "conda", "apptainer"]
    if name != "default":
        cfg = workdir / "config.yaml"
        cfg.write_text(yaml.safe_dump(_variant(name), sort_keys=False))
        args += ["--configfile", str(cfg)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=workdir)


VARIANTS = ["default", "gpu_mix", "remote", "sam3_only"]


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Snakemake's view of the workflow for each config variant (probed side by side)."""
    root = tmp_path_factory.mktemp("probe")
    procs = {name: _start_probe(name, root) for name in VARIANTS}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {stderr[-4000:]}"
        out[name] = json.loads(stdout)
    return out


def job_rules(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rules that run a job (not the target-only rules like `all`)."""
    return {name: r for name, r in p["rules"].items() if not r["norun"]}


def env_of(conda: dict[str, Any]) -> str:
    path = Path(conda["file"]).resolve()
    assert path.parent == ENVS and path.suffix == ".yaml", path
    return path.stem


def _find(obj: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a params structure."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                out.append(v)
            out += _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            out += _find(v, key)
    return out


def uses(config: dict[str, Any], params: dict[str, Any]) -> tuple[set[str], bool]:
    """(endpoints, SAM3?) a job calls, read from its params as the scripts read them.

    Synthesis jobs name their model roles under ``models`` (role -> {model, ...}); evaluate jobs
    name their model and judge with an ``endpoint`` key; the segmenter is the ``segmenter`` param.
    """
    # `config` (report_run's param: the whole config, for the report) names every endpoint
    params = {k: v for k, v in params.items() if k != "config"}
    endpoints: set[str] = set()
    for models in _find(params, "models"):
        if isinstance(models, dict):
            for role, spec in models.items():
                if isinstance(spec, dict) and "model" in spec and role in config["models"]:
                    endpoints.add(config["models"][role]["endpoint"])
    endpoints |= {e for e in _find(params, "endpoint") if isinstance(e, str)}
    sam3 = any(isinstance(s, dict) and s.get("backend") == "sam3" for s in _find(params, "segmenter"))
    return endpoints, sam3


def launches_vllm(config: dict[str, Any], endpoints: set[str]) -> bool:
    for name in endpoints:
        words = shlex.split(config["endpoints"].get(name, {}).get("launch") or "")
        if words and (Path(words[0]).name == "vllm" or any(w.startswith("vllm.") for w in words)):
            return True
    return False


def missing(env: str, packages: set[str]) -> set[str]:
    return {p for p in packages if canon(p) not in locked(env)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rule_has_an_env_and_the_image_built_from_it(probes, variant: str) -> None:
    """Under --sdm conda/apptainer every rule resolves (Snakemake's own expansion) to an env file
    in envs/ and to the image of that env (software.container with {env} replaced), rules and jobs."""
    p = probes[variant]
    template = p["config"]["software"]["container"]
    assert template == "envs/{env}.sif"  # the documented default
    problems = []
    for name, rule in job_rules(p).items():
        if rule["conda"] is None or rule["container"] is None:
            problems.append(f"rule {name}: conda={rule['conda']} container={rule['container']}")
            continue
        env = env_of(rule["conda"])
        if rule["container"] != template.replace("{env}", env):
            problems.append(f"rule {name}: env {env} but container {rule['container']}")
        if not (ENVS / f"{env}.def").is_file():
            problems.append(f"rule {name}: no envs/{env}.def to build its image from")
    for job in p["jobs"]:
        rule = p["rules"][job["rule"]]
        if rule["norun"]:
            continue
        if job["conda"] is None or job["container"] != template.replace("{env}", env_of(job["conda"])):
            problems.append(f"job {job['rule']} {job['wildcards']}: {job['conda']} {job['container']}")
    assert not problems, "\n".join(problems)
    assert len(p["jobs"]) > 5, "the DAG probe saw almost no jobs"


def vllm_sam3_problems(p: dict[str, Any]) -> tuple[list[str], set[str], set[str]]:
    """(problems, rules that launch vLLM, rules that run SAM3) of one probe."""
    cfg = p["config"]
    problems, seen_vllm, seen_sam3 = [], set(), set()
    items = [(f"rule {n}", r) for n, r in job_rules(p).items()]
    items += [(f"job {j['rule']} {j['wildcards']}", j) for j in p["jobs"] if j["conda"]]
    for what, item in items:
        endpoints, sam3 = uses(cfg, item["params"])
        env = env_of(item["conda"])
        if launches_vllm(cfg, endpoints):
            seen_vllm.add(what.split()[1])
            if missing(env, NEEDS_VLLM):
                problems.append(f"{what} launches vLLM ({sorted(endpoints)}) but env {env} lacks it")
        if sam3:
            seen_sam3.add(what.split()[1])
            if lack := missing(env, NEEDS_SAM3):
                problems.append(f"{what} runs SAM3 but env {env} lacks {sorted(lack)}")
    return problems, seen_vllm, seen_sam3


@pytest.mark.parametrize("variant", VARIANTS)
def test_rules_that_launch_vllm_or_run_sam3_get_them(probes, variant: str) -> None:
    """A rule whose jobs launch vLLM (``vllm serve``, ``python -m vllm...``) or run SAM3 names an
    env, and therefore an image, whose lock has vLLM / SAM3 (with what SAM3 imports undeclared)."""
    problems, seen_vllm, seen_sam3 = vllm_sam3_problems(probes[variant])
    assert not problems, "\n".join(problems)
    if variant == "gpu_mix":  # the check saw what it checks
        assert {"evaluate"} <= seen_vllm and seen_vllm - {"evaluate"}, seen_vllm
        assert seen_sam3, "no rule ran SAM3 in a config with segmenter.backend: sam3"
    if variant == "sam3_only":
        assert seen_sam3 and not seen_vllm


def test_production_config_gets_vllm_and_sam3(tmp_path: Path) -> None:
    """The same for config/config.production.yaml as users run it (vLLM teacher, SAM3)."""
    from .test_slurm_production import write_site

    workdir = tmp_path / "prod"
    (workdir / "envs").mkdir(parents=True)
    for env in ENV_NAMES:
        (workdir / "envs" / f"{env}.sif").write_bytes(b"")
    res = subprocess.run(
        # rules only; a site file says where this machine has the data the DAG needs (paths)
        [PY, str(REPO / "tests" / "envs_probe.py"), str(workdir), "--rules-only", "--configfile",
         str(REPO / "config" / "config.production.yaml"), "--configfile", str(write_site(workdir))],
        capture_output=True, text=True, timeout=600, cwd=workdir,
    )
    if res.returncode != 0 and "invalid configuration" in res.stderr:
        # issue 13 point 5 (helper "slurm"): the production config does not validate yet
        pytest.skip("config/config.production.yaml does not validate: "
                    + res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr[-4000:]
    problems, seen_vllm, seen_sam3 = vllm_sam3_problems(json.loads(res.stdout))
    assert not problems, "\n".join(problems)
    assert "synthesize" in seen_vllm & seen_sam3, (seen_vllm, seen_sam3)


@pytest.mark.parametrize("variant", ["default", "remote"])
def test_jobs_without_gpu_software_use_the_cpu_env(probes, variant: str) -> None:
    """Simulated or remote (base_url) models and the simulated segmenter need no GPU env: the toy
    default builds only what it needs (the GPU env only for the torch rules)."""
    p = probes[variant]
    envs = {n: env_of(r["conda"]) for n, r in job_rules(p).items()}
    gpu_only = {n for n in envs if n in RULE_NEEDS}
    assert {n for n, e in envs.items() if e == "cpu"} == set(envs) - gpu_only, envs


def test_rule_specific_needs(probes) -> None:
    """attention/tiny_vlm need torch + transformers; train/merge need verl (and what it runs)."""
    problems = []
    for variant, p in probes.items():
        for name, needs in RULE_NEEDS.items():
            env = env_of(job_rules(p)[name]["conda"])
            if lack := missing(env, needs):
                problems.append(f"{variant}: rule {name} env {env} lacks {sorted(lack)}")
    assert not problems, "\n".join(problems)


def test_envs_are_chosen_from_the_config(probes) -> None:
    """The same rule gets the CPU env for simulated models and the GPU env for launched vLLM."""
    default = {n: env_of(r["conda"]) for n, r in job_rules(probes["default"]).items()}
    mix = {n: env_of(r["conda"]) for n, r in job_rules(probes["gpu_mix"]).items()}
    changed = {n for n in default if default[n] != mix[n]}
    assert "evaluate" in changed and len(changed) >= 2, (default, mix)
    assert all(mix[n] == "gpu" for n in changed)


# --------------------------------------------------------------------------------------------
# Env files as Snakemake resolves them
# --------------------------------------------------------------------------------------------

PATH_OPTIONS = ("-e", "--editable", "-r", "--requirement", "-c", "--constraint")


def local_paths(pip_entry: str) -> list[str]:
    """Local paths named by one pip entry of a conda env file (relative paths included)."""
    words = pip_entry.split()  # as pip reads a requirements line (conda writes one per entry)
    out = []
    for i, w in enumerate(words):
        if w in PATH_OPTIONS and i + 1 < len(words):
            out.append(words[i + 1])
        elif re.match(r"^(-e|--editable|-r|--requirement|-c|--constraint)=?(\S+)$", w):
            out.append(re.sub(r"^(-e|--editable|-r|--requirement|-c|--constraint)=?", "", w))
        elif i == 0 and (w.startswith((".", "/", "file:")) or ("/" in w and "://" not in w)):
            out.append(w)
    return [re.sub(r"^file:(//)?", "", p) for p in out if "://" not in p or p.startswith("file:")]


@cache
def unresolved(env_file: Path, copied_to_dir: Path) -> list[str]:
    """Paths in the pip section that do not resolve from where conda reads the env file.

    Snakemake copies the env file to <copied_to_dir>/<hash>.yaml and conda runs pip with the
    folder of that copy as its working directory: relative paths resolve there, not in envs/.
    """
    env = _load_yaml(env_file)
    problems = []
    for dep in env["dependencies"]:
        if not isinstance(dep, dict):
            continue
        for entry in dep.get("pip", []):
            for raw in local_paths(entry):
                target = (copied_to_dir / raw).resolve()
                editable = entry.split()[0] in ("-e", "--editable") or target.is_dir()
                project = any((target / f).is_file() for f in ("pyproject.toml", "setup.py"))
                if not target.exists() or (editable and not project):
                    problems.append(f"{env_file.name}: pip entry {entry!r} -> {target} (no such "
                                    + ("project)" if target.exists() else "path)"))
    return problems


def test_env_paths_resolve_as_snakemake_resolves_them(probes) -> None:
    """The env file of every rule exists where Snakemake looks for it, and nothing in it is a
    path that only resolves from envs/ (e.g. ``-e ../``: conda reads the copy in .snakemake/conda/)."""
    problems = []
    for variant, p in probes.items():
        for name, rule in job_rules(p).items():
            file, copied = Path(rule["conda"]["file"]), Path(rule["conda"]["copied_to_dir"])
            if not file.is_file():
                problems.append(f"{variant}: rule {name}: {file} does not exist")
                continue
            assert copied.name == "conda" and copied.parent.name == ".snakemake", copied
            problems += [f"{variant}: rule {name}: {m}" for m in unresolved(file, copied)]
    assert not problems, "\n".join(sorted(set(problems)))


def test_path_check_catches_editable_parent(tmp_path: Path) -> None:
    """The check above fails for today's mistake: `-e ../` from .snakemake/conda/ is .snakemake/."""
    (tmp_path / "envs").mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    bad = tmp_path / "envs" / "x.yaml"
    bad.write_text("name: x\ndependencies:\n  - pip:\n      - numpy==2.3.5\n      - -e ../\n")
    copied = tmp_path / ".snakemake" / "conda"
    copied.mkdir(parents=True)
    assert unresolved(bad, tmp_path / "envs") == []  # resolving from envs/ would hide it
    assert len(unresolved(bad, copied)) == 1
    assert local_paths("--hash=sha256:ab numpy==1") == [] and local_paths("-r reqs.txt") == ["reqs.txt"]


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------


def test_generated_files_match_the_locks() -> None:
    """envs/<env>.yaml and .post-deploy.sh are exactly what envs/lock.py writes from the locks."""
    assert lock.check() == []


@pytest.mark.parametrize("env", ENV_NAMES)
def test_lock_is_complete_and_hash_checked(env: str) -> None:
    """Every package pinned to one version with sha256 hashes; the .in's requirements hold."""
    pkgs = locked(env)
    assert len(pkgs) > 20
    for p in pkgs.values():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", p.version), p
        assert p.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in p.hashes), p.name
    for req in lock.read_in(env):
        p = pkgs.get(canon(req.name))
        assert p is not None, f"{env}.in requires {req} but the lock lacks it"
        assert req.specifier.contains(p.version, prereleases=True), (str(req), p.version)


@pytest.mark.parametrize("env", ENV_NAMES)
def test_env_file_is_the_lock(env: str) -> None:
    """The conda env file: patch-pinned Python and pip, and exactly the lock on the pip side."""
    spec = env_yaml(env)
    assert spec["name"] == f"r2i-{env}"
    assert spec["channels"][0] == "conda-forge"
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert conda == [f"python={lock.PYTHON}", f"pip={lock.PIP}"], conda
    assert re.fullmatch(r"3\.\d+\.\d+", lock.PYTHON)
    (pip,) = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    in_yaml = {}
    for entry in pip:
        req, *opts = entry.split()
        name, version = req.split("==")
        in_yaml[canon(name)] = (version, sorted(o.removeprefix("--hash=") for o in opts))
    main = lock.read_lock(env, "main")
    assert in_yaml == {n: (p.version, sorted(p.hashes)) for n, p in main.items()}
    assert set(locked(env)) - set(main) == lock.BUILD_AFTER.get(env, set())


def _applies(req: Requirement) -> bool:
    return lock.applies(req)


@pytest.mark.parametrize("env", ENV_NAMES)
def test_lock_satisfies_the_library(env: str) -> None:
    """Every runtime requirement of the library (pyproject, without snakemake) is in every env at
    a version it allows: the scripts import the library from the checkout, so nothing else
    installs its dependencies."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    problems = []
    for req in map(Requirement, deps):
        if canon(req.name) == "snakemake" or not _applies(req):
            continue
        p = locked(env).get(canon(req.name))
        if p is None or not req.specifier.contains(p.version, prereleases=True):
            problems.append(f"{req}: locked {p.version if p else 'nothing'}")
    assert not problems, f"{env}: " + "; ".join(problems)


def _snakemake_requirements() -> list[tuple[str, Requirement]]:
    out = []
    for dist in metadata.distributions():
        name = canon(dist.metadata["Name"])
        if name == "snakemake" or (name.startswith("snakemake-interface-")):
            out += [(name, r) for r in map(Requirement, dist.requires or []) if _applies(r)]
    return out


@pytest.mark.parametrize("env", ENV_NAMES)
def test_lock_satisfies_snakemakes_requirements(env: str) -> None:
    """A job's script imports the host's Snakemake, which then uses the env's copies of the
    packages it shares with it (tenacity, packaging, pyyaml, ...): they must fit Snakemake."""
    reqs = _snakemake_requirements()
    assert any(r.name == "tenacity" for _, r in reqs), "snakemake's requirements not found"
    problems = [
        f"{owner} requires {r}, locked {locked(env)[canon(r.name)].version}"
        for owner, r in reqs
        if canon(r.name) in locked(env)
        and not r.specifier.contains(locked(env)[canon(r.name)].version, prereleases=True)
    ]
    assert not problems, f"{env}: " + "; ".join(problems)


def test_old_unsatisfiable_pin_is_caught() -> None:
    """The check above would have caught the old `tenacity=9.0.0` (snakemake needs >= 9.1.4)."""
    tenacity = [r for _, r in _snakemake_requirements() if r.name == "tenacity"]
    assert tenacity and not all(r.specifier.contains("9.0.0") for r in tenacity)


# --------------------------------------------------------------------------------------------
# What the rule scripts import
# --------------------------------------------------------------------------------------------


def _module_file(name: str) -> Path | None:
    base = REPO / "workflow" / Path(*name.split("."))
    for cand in (base / "__init__.py", base.with_suffix(".py")):
        if cand.is_file():
            return cand
    return None


@cache
def third_party_imports(script: Path) -> frozenset[str]:
    """Top-level third-party modules imported by ``script`` and the r2i modules it reaches
    (every import, including those inside functions)."""
    stdlib = set(sys.stdlib_module_names)
    out: set[str] = set()
    seen: set[str] = set()
    todo: list[tuple[Path, str]] = [(script, "__main__")]
    while todo:
        path, modname = todo.pop()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, up level - 1 packages
                    package = modname.split(".")
                    if path.name != "__init__.py":
                        package = package[:-1]
                    base = package[: len(package) - (node.level - 1)]
                    mod = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    mod = node.module or ""
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "r2i":
                    parts = name.split(".")
                    for i in range(1, len(parts) + 1):
                        sub = ".".join(parts[:i])
                        f = _module_file(sub)
                        if f and sub not in seen:
                            seen.add(sub)
                            todo.append((f, sub))
                elif top and top not in stdlib and top not in ("_checkout", "snakemake"):
                    out.add(top)
    return frozenset(out)


@cache
def _dists() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution(module: str) -> str:
    if module in MODULE_DIST:
        return MODULE_DIST[module]
    dists = _dists().get(module)
    assert dists, f"cannot tell which distribution provides {module!r}: add it to MODULE_DIST"
    return dists[0]


def test_import_scan_follows_the_library() -> None:
    mods = third_party_imports(REPO / "scripts" / "manifest.py")
    assert {"PIL", "pyarrow"} <= mods and "r2i" not in mods


def test_envs_have_what_their_rules_scripts_import(probes) -> None:
    """Every third-party module a rule's script (and the library it reaches) imports is in the
    lock of the env Snakemake gives that rule: the envs do not rely on the host's packages that
    Snakemake appends to a job's sys.path."""
    problems = []
    for variant, p in probes.items():
        for name, rule in job_rules(p).items():
            if not rule["script"]:
                continue
            script = (REPO / "rules" / rule["script"]).resolve()
            env = env_of(rule["conda"])
            for mod in sorted(third_party_imports(script) - FEATURE_MODULES):
                if canon(distribution(mod)) not in locked(env):
                    problems.append(f"{variant}: rule {name} ({script.name}) imports {mod} "
                                    f"({distribution(mod)}), not in env {env}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_scripts_take_the_library_from_the_checkout() -> None:
    """No env installs the project: each script that imports r2i calls use_checkout(__file__)
    before its first r2i import."""
    problems = []
    for script in sorted((REPO / "scripts").glob("*.py")):
        if script.name.startswith("_"):
            continue
        tree = ast.parse(script.read_text(encoding="utf-8"))
        r2i_lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and (n.module or "").split(".")[0] == "r2i"]
        if not r2i_lines:
            continue
        calls = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "use_checkout"]
        if not calls or min(calls) > min(r2i_lines):
            problems.append(script.name)
    assert not problems, f"scripts importing r2i before use_checkout(__file__): {problems}"


# --------------------------------------------------------------------------------------------
# Apptainer definitions
# --------------------------------------------------------------------------------------------


def test_every_env_has_a_definition_and_vice_versa() -> None:
    assert {p.stem for p in ENVS.glob("*.def")} == set(ENV_NAMES)
    assert {p.stem for p in ENVS.glob("*.in")} == set(ENV_NAMES)
    assert {p.stem for p in ENVS.glob("*.yaml")} == set(ENV_NAMES)


def _recipe(env: str) -> Any:
    from spython.main.parse.parsers import SingularityParser

    parser = SingularityParser(str(ENVS / f"{env}.def"))  # raises for a non-docker bootstrap
    layers = list(parser.recipe.values())
    assert len(layers) == 1, "single-stage definitions only"
    return layers[0]


@pytest.mark.parametrize("env", ENV_NAMES)
def test_definition_installs_exactly_its_lock(env: str) -> None:
    recipe = _recipe(env)
    image = recipe.fromHeader
    assert image and re.match(r"^[a-z0-9./_-]+:[A-Za-z0-9._-]+$", image) and ":latest" not in image
    files = {line.split()[0]: line.split()[1] for line in recipe.files}
    for src in files:
        assert (REPO / src).exists(), f"%files source {src} does not exist (relative to the repo)"
    locks = [lock.lock_path(env)] + ([lock.build_lock_path(env)] if lock.BUILD_AFTER.get(env) else [])
    post = "\n".join(recipe.install).replace("\\\n", " ")
    post = re.sub(r"\s+", " ", post)
    for path in locks:
        rel = str(path.relative_to(REPO))
        assert rel in files, f"%files does not copy {rel}"
        install = re.search(rf"pip install [^;&|]*-r {re.escape(files[rel])}", post)
        assert install and "--require-hashes" in install.group(0) and "--no-deps" in install.group(0), (
            f"{env}.def does not install {rel} hash-checked with --no-deps"
        )
    # the conda side is the env file's
    assert f"-n r2i-{env} " in post and f"python={lock.PYTHON} pip={lock.PIP}" in post, post
    assert "pip check" in post
    assert any(e.startswith("PATH=") and f"/envs/r2i-{env}/bin" in e for e in recipe.environ)
    assert recipe.labels and recipe.test


@pytest.mark.parametrize("env", ENV_NAMES)
def test_definition_checks_what_its_rules_need(env: str, probes) -> None:
    """The image build imports the scripts' r2i modules (envs/check_env.py) and the packages its
    rules need (vLLM, SAM3, verl, ...), so an image without them does not build."""
    post = re.sub(r"\s+", " ", "\n".join(_recipe(env).install).replace("\\\n", " "))
    m = re.search(r"check_env\.py --checkout (\S+) ([^;&|]*?)(?: rm -rf|$)", post)
    assert m, f"{env}.def does not run envs/check_env.py"
    modules = set(m.group(2).split())
    need: set[str] = set()
    for p in probes.values():
        for name, rule in job_rules(p).items():
            if env_of(rule["conda"]) == env:
                need |= RULE_NEEDS.get(name, set())
    if env == "gpu":
        need |= NEEDS_VLLM | NEEDS_SAM3 - {"psutil"}
    as_modules = {n.replace("-", "_") for n in need}
    assert as_modules <= {mod.split(".")[0] for mod in modules}, (sorted(as_modules), modules)


def test_check_env_imports_and_reports(tmp_path: Path) -> None:
    """envs/check_env.py passes here for the CPU side and fails, naming it, for a missing module."""
    ok = subprocess.run([PY, str(ENVS / "check_env.py"), "--checkout", str(REPO), "numpy"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "ok   r2i.synthesis.entry" in ok.stdout or "ok   r2i." in ok.stdout
    bad = subprocess.run([PY, str(ENVS / "check_env.py"), "--checkout", str(REPO),
                          "no_such_module_r2i"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "FAIL no_such_module_r2i" in bad.stderr


def test_post_deploy_builds_flash_attn_from_the_lock(probes) -> None:
    """Snakemake finds envs/training.post-deploy.sh for the training env (and only there), and the
    script installs flash-attn exactly as locked, compiled against the env's torch."""
    for name, rule in job_rules(probes["default"]).items():
        expected = str(ENVS / "training.post-deploy.sh") if env_of(rule["conda"]) == "training" else None
        got = rule["conda"]["post_deploy"]
        assert (str(Path(got).resolve()) if got else None) == expected, name
    script = (ENVS / "training.post-deploy.sh").read_text()
    (fa,) = lock.read_lock("training", "build").values()
    assert fa.requirement() in script and "--no-build-isolation" in script
    assert "--require-hashes" in script and "FLASH_ATTENTION_FORCE_BUILD" in script
    assert os.access(ENVS / "training.post-deploy.sh", os.X_OK)
    res = subprocess.run(["bash", "-n", str(ENVS / "training.post-deploy.sh")], capture_output=True)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------------------------
# --sdm apptainer without images; a Python without the project
# --------------------------------------------------------------------------------------------


def test_missing_image_fails_before_any_job(tmp_path: Path) -> None:
    """`snakemake --sdm apptainer` with an image that was not built says which and how to build it."""
    res = subprocess.run(
        [PY, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--sdm", "apptainer"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Apptainer image envs/cpu.sif" in out and "apptainer build envs/cpu.sif envs/cpu.def" in out


def _python_without_project(tmp_path: Path) -> Path:
    """A Python that has this machine's packages but not the r2i project, like an env from
    envs/*.yaml: a venv whose .pth adds the dev site-packages (their own .pth files, among them
    the editable install of r2i, are not processed from there)."""
    import site
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    py = tmp_path / "venv" / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "host-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe_r2i = subprocess.run([str(py), "-c", "import r2i"], capture_output=True, text=True)
    assert probe_r2i.returncode != 0, "the stand-in env must not see the project"
    return py


@pytest.mark.e2e
def test_rule_scripts_run_in_a_python_without_the_project(tmp_path: Path) -> None:
    """The toy world, manifest and a synthesis job with the simulator run under a Python that has
    the dependencies but not the project (as in a conda env or an image): the scripts import the
    library from the checkout and the simulator's command (`r2i-sim-server`) is found."""
    py = _python_without_project(tmp_path)
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["toy_world"]["size"] = "tiny"
    cfg["manifest"]["shards"] = 1
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {"HOME": str(tmp_path), "PATH": f"{py.parent}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    target = "results/toy/shards/000/objects.parquet"
    res = subprocess.run(
        [str(py), "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-c", "2", target,
         "--configfile", "config.yaml"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert (work / target).is_file()
    logs = "".join(p.read_text() for p in (work / "results" / "logs").rglob("*.log"))
    assert "r2i-sim-server (simulated, test double)" in logs
