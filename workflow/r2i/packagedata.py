"""Files the library ships as package data (``r2i/data/``): prompt templates, the seed questions
and the config schema.

They live inside the package, not in the source tree's ``config/``, so that a wheel install, a
non-editable install or an Apptainer image that copies ``workflow/`` only (verl's reward workers,
the evaluation jobs) finds them. They are located with :mod:`importlib.resources`; the package is
installed unzipped (setuptools wheels always are), so every resource is a real file and can be a
Snakemake input.

Config values under ``prompts`` stay plain file paths: the defaults point at these files
(``workflow/r2i/data/prompts/<name>.txt``, resolved against the working directory, then the
workflow's copy by ``rules/common.smk``) and a user's own file replaces one by path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["PROMPT_NAMES", "data_path", "prompt_path", "schema_path", "seed_questions_path"]

#: Every prompt template the library ships (``data/prompts/<name>.txt``).
PROMPT_NAMES = (
    "answer_format", "answer_question", "consensus", "distractors", "eval_system",
    "focus_instruction", "judge", "list_objects", "mcq", "validate_question",
    "write_questions", "zoom_tool_system", "zoom_tool_pixel_system",
)  # fmt: skip


def data_path(*parts: str) -> Path:
    """The filesystem path of ``r2i/data/<parts...>``; FileNotFoundError naming it if missing."""
    root = resources.files("r2i").joinpath("data")
    res = root.joinpath(*parts)
    path = Path(str(res))
    if not path.is_file():
        raise FileNotFoundError(
            f"r2i package data {'/'.join(parts)} not found at {path}: the r2i installation is "
            "incomplete (reinstall the package; package data is declared in pyproject.toml)")
    return path


def prompt_path(name: str) -> Path:
    """The shipped prompt template ``name`` (e.g. ``"judge"``)."""
    if name not in PROMPT_NAMES:
        raise KeyError(f"no shipped prompt {name!r}; known: {', '.join(PROMPT_NAMES)}")
    return data_path("prompts", f"{name}.txt")


def seed_questions_path() -> Path:
    """The shipped seed question list (one example question per line)."""
    return data_path("seed_questions.txt")


def schema_path(name: str = "config") -> Path:
    """The shipped config schema (``config``) or one of its fragments (``evaluation``, ...)."""
    return data_path("schema", f"{name}.schema.yaml")
