"""Prompt templates (``string.Template`` files under ``config/prompts/``).

``$name`` placeholders are used instead of ``str.format`` because prompts contain literal braces
(``\\boxed{}``, JSON examples). Every rendered prompt can be traced to its template by hash,
recorded in each item's provenance.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from string import Template


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


def load_templates(paths: dict[str, str]) -> dict[str, PromptTemplate]:
    return {name: load_template(path, name) for name, path in paths.items()}


def load_seed_questions(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def sample_examples(seed_questions: list[str], k: int, seed: int) -> str:
    """A reproducible random sample of seed questions, one per line, for inspiration."""
    rng = random.Random(seed)
    chosen = rng.sample(seed_questions, min(k, len(seed_questions)))
    return "\n".join(f"- {q}" for q in chosen)
