"""Prompt templates (``string.Template`` files; the shipped ones are package data under
``r2i/data/prompts/``, see :mod:`r2i.packagedata`).

``$name`` placeholders are used instead of ``str.format`` because prompts contain literal braces
(``\\boxed{}``, JSON examples). Every rendered prompt can be traced to its template by hash,
recorded in each item's provenance.

Interface used by the synthesis code: ``config["prompts"]`` maps a template name to a file path
(after ``rules/common.smk`` every value is an existing file: the config's path, else the
workflow's copy); :func:`load_templates` reads them. :func:`load_templates` also accepts ``None``
for a value (or a missing mapping), meaning the shipped default of that name.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

from r2i.packagedata import prompt_path, seed_questions_path


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    def render(self, **values: object) -> str:
        """Fill every placeholder; a missing value is an error naming the template and key."""
        try:
            return Template(self.text).substitute({k: str(v) for k, v in values.items()}).strip()
        except KeyError as err:
            raise KeyError(f"prompt template '{self.name}' needs a value for ${err.args[0]}") from None


def load_template(path: str | Path, name: str | None = None) -> PromptTemplate:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise FileNotFoundError(f"prompt template {p} cannot be read: {err.strerror}") from None
    return PromptTemplate(name=name or p.stem, text=text)


def load_templates(paths: Mapping[str, str | Path | None] | None = None,
                   names: Iterable[str] = ()) -> dict[str, PromptTemplate]:
    """Templates by name from ``paths`` (name -> file; ``None``: the shipped default), plus the
    shipped defaults of ``names`` not in ``paths``."""
    out = {name: load_template(path if path is not None else _shipped(name), name)
           for name, path in (paths or {}).items()}
    for name in names:
        out.setdefault(name, load_template(prompt_path(name), name))
    return out


def _shipped(name: str) -> Path:
    return seed_questions_path() if name == "seed_questions" else prompt_path(name)


def default_template(name: str) -> PromptTemplate:
    """The shipped template ``name`` (package data), e.g. ``default_template("judge")``."""
    return load_template(prompt_path(name), name)


def load_seed_questions(path: str | Path | None = None) -> list[str]:
    """Seed questions of ``path`` (None: the shipped list), blank and ``#`` lines skipped."""
    lines = Path(path or seed_questions_path()).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def sample_examples(seed_questions: list[str], k: int, seed: int) -> str:
    """A reproducible random sample of seed questions, one per line, for inspiration."""
    rng = random.Random(seed)
    chosen = rng.sample(seed_questions, min(k, len(seed_questions)))
    return "\n".join(f"- {q}" for q in chosen)
