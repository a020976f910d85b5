"""Software environments: pinned conda env files, Apptainer definitions, rule references.

Nothing is built or installed here: env files are checked against a small schema (every package
pinned, the repository library installed with `-e ../`), definition files are parsed with spython,
and every `conda:` / `container:` path named in rules/*.smk must exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
RULES = REPO / "rules"

ENV_FILES = sorted(ENVS.glob("*.yaml"))
DEF_FILES = sorted(ENVS.glob("*.def"))

# conda spec pinned to a version: name[=|==]version[=build]; no ranges, no wildcards
CONDA_PINNED = r"^[A-Za-z0-9_.\-]+(==?)[0-9][A-Za-z0-9_.+!]*(=[A-Za-z0-9_.*]+)?$"
# pip requirement pinned with ==, extras and environment markers allowed
PIP_PINNED = r"^[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,.\-]+\])?==[0-9][A-Za-z0-9_.+!\-]*(\s*;.+)?$"
# pip options that may appear in a conda env's pip section (editable repo install, index URLs)
PIP_OPTION = r"^(-e \.\./?|--editable \.\./?|--(extra-)?index-url \S+|--find-links \S+)$"

ENV_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "channels", "dependencies"],
    "properties": {
        "name": {"type": "string", "pattern": r"^r2i-[a-z0-9][a-z0-9\-]*$"},
        "channels": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "minLength": 1},
            "contains": {"const": "conda-forge"},
        },
        "dependencies": {
            "type": "array",
            "minItems": 1,
            "items": {
                "oneOf": [
                    {"type": "string", "pattern": CONDA_PINNED},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["pip"],
                        "properties": {
                            "pip": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "string",
                                    "anyOf": [{"pattern": PIP_PINNED}, {"pattern": PIP_OPTION}],
                                },
                                # the workflow's own library, installed from the checkout
                                "contains": {"pattern": r"^(-e|--editable) \.\./?$"},
                            }
                        },
                    },
                ]
            },
            # a pinned python, a pinned pip and a pip section
            "allOf": [
                {"contains": {"type": "string", "pattern": r"^python==?3\.[0-9]+"}},
                {"contains": {"type": "string", "pattern": r"^pip==?[0-9]"}},
                {"contains": {"type": "object"}},
            ],
        },
    },
}


def load_env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_env_files_exist() -> None:
    names = {p.stem for p in ENV_FILES}
    assert {"cpu-synthesis", "gpu-serving", "segmentation", "training", "evaluation"} <= names


def test_env_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(ENV_SCHEMA)


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_matches_schema(path: Path) -> None:
    env = load_env(path)
    errors = sorted(jsonschema.Draft202012Validator(ENV_SCHEMA).iter_errors(env), key=str)
    assert not errors, "\n".join(
        f"{path.name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )
    assert env["name"] == f"r2i-{path.stem}", "env name must be r2i-<file stem>"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_has_no_duplicate_packages(path: Path) -> None:
    env = load_env(path)
    names: list[str] = []
    for dep in env["dependencies"]:
        specs = dep["pip"] if isinstance(dep, dict) else [dep]
        for spec in specs:
            if spec.startswith("-"):
                continue
            names.append(re.split(r"[\[=<>;\s]", spec, maxsplit=1)[0].lower().replace("_", "-"))
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"{path.name}: listed twice: {sorted(dupes)}"


def test_rejects_unpinned_env() -> None:
    """The schema really rejects what it should (guards against a schema that accepts anything)."""
    validator = jsonschema.Draft202012Validator(ENV_SCHEMA)
    good = {
        "name": "r2i-x",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.12", "pip=24.2", {"pip": ["torch==2.11.0", "-e ../"]}],
    }
    assert validator.is_valid(good)
    for bad_deps in (
        ["python", "pip=24.2", {"pip": ["torch==2.11.0", "-e ../"]}],  # python unpinned
        ["python=3.12", "pip=24.2", {"pip": ["torch>=2.11", "-e ../"]}],  # range
        ["python=3.12", "pip=24.2", {"pip": ["torch==2.11.0"]}],  # no repo library
        ["python=3.12", "pip=24.2", "numpy=2.*", {"pip": ["-e ../"]}],  # wildcard
        ["python=3.12", "pip=24.2"],  # no pip section
    ):
        assert not validator.is_valid({**good, "dependencies": bad_deps}), bad_deps


# --------------------------------------------------------------------------------------------
# Apptainer definition files
# --------------------------------------------------------------------------------------------


def test_every_env_has_a_definition_and_vice_versa() -> None:
    assert {p.stem for p in ENV_FILES} == {p.stem for p in DEF_FILES}


def _sections(text: str) -> dict[str, list[str]]:
    """Header keys and %sections of a definition file, by name (lower case)."""
    out: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in text.splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0].lower()
            out.setdefault(current, [])
        elif line.strip() and not line.strip().startswith("#"):
            out[current].append(line.strip())
    return out


@pytest.mark.parametrize("path", DEF_FILES, ids=lambda p: p.name)
def test_definition_parses_with_spython(path: Path) -> None:
    from spython.main.parse.parsers import SingularityParser

    parser = SingularityParser(str(path))  # raises for a non-docker bootstrap agent
    layers = list(parser.recipe.values())
    assert len(layers) == 1, "single-stage definitions only"
    recipe = layers[0]
    # From: a pinned image tag (no :latest, no untagged image)
    image = recipe.fromHeader
    assert image and re.match(r"^[a-z0-9./_-]+:[A-Za-z0-9._-]+$", image), image
    assert not image.endswith(":latest"), image
    # %post non-empty, and it creates the conda env from the env file
    assert recipe.install, "%post is empty"
    post = "\n".join(recipe.install)
    assert f"-f {path.stem}.yaml" in post, "%post must create the env from its env file"
    # %files copies the env file and the library sources the env installs with -e ../
    files = {line.split()[0]: line.split()[1] for line in recipe.files}
    assert files.get(f"envs/{path.stem}.yaml") == f"/opt/r2i/envs/{path.stem}.yaml", files
    assert {"pyproject.toml", "README.md", "workflow"} <= set(files), files
    for src in files:
        assert (REPO / src).exists(), (
            f"%files source {src} does not exist (paths are relative to the repo root)"
        )
    # %environment puts the env first on PATH
    env = load_env(ENVS / f"{path.stem}.yaml")
    assert any(e.startswith("PATH=") and f"/envs/{env['name']}/bin" in e for e in recipe.environ), (
        recipe.environ
    )
    assert recipe.labels, "%labels is empty"


@pytest.mark.parametrize("path", DEF_FILES, ids=lambda p: p.name)
def test_definition_header_and_sections(path: Path) -> None:
    sections = _sections(path.read_text())
    header = dict(line.split(":", 1) for line in sections["header"])
    assert header.get("Bootstrap", "").strip() == "docker", header
    assert header.get("From", "").strip(), header
    for name in ("files", "post", "environment", "labels", "help"):
        assert sections.get(name), f"%{name} missing or empty in {path.name}"
    assert any(line.startswith("org.opencontainers.image.title") for line in sections["labels"])


# --------------------------------------------------------------------------------------------
# conda: / container: paths named in the rules
# --------------------------------------------------------------------------------------------

DIRECTIVE = re.compile(r"^(?P<indent>\s+)(?P<kind>conda|container):\s*(?P<inline>\S.*)?$")


def directive_values(smk: Path) -> list[tuple[int, str, str | None]]:
    """(line, kind, value) for every conda:/container: directive; value None if not a literal."""
    lines = smk.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = DIRECTIVE.match(line)
        if not m:
            continue
        raw = m.group("inline")
        if raw is None:  # value on the next non-empty line
            raw = next((nxt.strip() for nxt in lines[i + 1 :] if nxt.strip()), "")
        raw = raw.split("  #")[0].strip().rstrip(",")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = None  # an expression (function call, variable): not checked here
        out.append((i + 1, m.group("kind"), value if isinstance(value, str) else None))
    return out


def resolve(value: str, smk: Path) -> Path:
    # Snakemake resolves relative conda env paths against the rule file's folder
    return (smk.parent / value).resolve()


def container_candidates(value: str, smk: Path) -> list[Path]:
    # a local image path is handed to apptainer as is, i.e. relative to the working directory
    # (the repository root); accept a path relative to the rule file too
    return [(REPO / value).resolve(), (smk.parent / value).resolve()]


def test_rule_software_paths_exist() -> None:
    problems, seen = [], 0
    for smk in sorted(RULES.glob("*.smk")):
        for line, kind, value in directive_values(smk):
            if value is None:
                continue
            seen += 1
            where = f"{smk.relative_to(REPO)}:{line}"
            if kind == "conda":
                # a value not ending in .yaml names a pre-existing env: not checkable here
                if value.endswith((".yaml", ".yml")) and not resolve(value, smk).is_file():
                    problems.append(f"{where}: conda env file {value} does not exist")
            elif "://" in value:
                if not re.match(r"^(docker|oras|library|shub|https?)://\S+$", value):
                    problems.append(f"{where}: container URI {value} is malformed")
            else:
                paths = container_candidates(value, smk)
                if value.endswith(".sif"):
                    # images are built from envs/<name>.def and are not in the repository
                    if not any(p.is_file() or p.with_suffix(".def").is_file() for p in paths):
                        problems.append(f"{where}: {value}: neither the image nor its .def exists")
                elif not any(p.exists() for p in paths):
                    problems.append(f"{where}: container path {value} does not exist")
    assert seen > 0, "no conda:/container: directives found in rules/*.smk"
    assert not problems, "\n".join(problems)


def test_directive_parser_handles_both_layouts(tmp_path: Path) -> None:
    smk = tmp_path / "x.smk"
    smk.write_text(
        'rule a:\n    conda:\n        "../envs/a.yaml"\n    container: "docker://x/y:1"\n'
        "rule b:\n    conda: env_for('b')\n"
    )
    assert directive_values(smk) == [
        (2, "conda", "../envs/a.yaml"),
        (4, "container", "docker://x/y:1"),
        (6, "conda", None),
    ]
