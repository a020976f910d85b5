"""Stage memo: content-addressed results of a shard's synthesis stages.

A shard's stages run in one job (:mod:`r2i.synthesis.pipeline`), so changing a late stage's
setting reruns the job, and Snakemake deletes all of the job's outputs first. The model calls are
in the call cache, but decoding, segmenting (SAM3 on a GPU in production), cropping and drawing
boxes would all be done again. The memo keeps each finished stage's table and stats under a key
that hashes everything the stage's rows depend on:

* the key of the stage before it (so a key covers the whole chain back to the shard's image list),
* the stage's own settings, model names and image budgets, and the text of its prompts,
* for ``objects``: the shard's image list (content hashes and paths), the segmenter config and the
  decoding limit,
* the code: a hash of the modules that compute the rows.

Same key, same rows: a stage with a memo hit is not run, and its table is linked into place. An
entry is written only after the whole job succeeded, by hard link when the memo and the results
are on one file system (no extra space while the outputs exist) and by copy otherwise, always
via a temporary name and an atomic rename, so a killed job never leaves a half entry. An entry
that cannot be read is a miss. The memo lives under the call cache directory
(``<cache_dir>/stage-memo``) and can be deleted at any time; ``stage_memo: false`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from r2i.io import atomic_write_text

log = logging.getLogger("r2i.stage")

#: Modules whose code decides a stage's rows (their source is part of every key).
_CODE_MODULES = ("r2i.synthesis.stages", "r2i.synthesis.pipeline", "r2i.synthesis.records",
                 "r2i.images", "r2i.pngpatch", "r2i.parsing", "r2i.prompts", "r2i.segment")


@lru_cache(maxsize=1)
def code_version() -> str:
    import importlib

    h = hashlib.sha256()
    for name in _CODE_MODULES:
        mod = importlib.import_module(name)
        path = getattr(mod, "__file__", None)
        h.update(name.encode())
        if path:
            h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, upstream: str | None, inputs: Mapping[str, Any]) -> str:
    """Key of ``stage`` given the key of the stage before it and what else it depends on."""
    doc = {"stage": stage, "upstream": upstream, "code": code_version(), "inputs": inputs}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` atomically: hard link if possible, else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StageMemo:
    """``<root>/<key[:2]>/<key>.parquet`` + ``.stats.json``; ``root=None`` disables it."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.root is not None
        d = self.root / key[:2]
        return d / f"{key}.parquet", d / f"{key}.stats.json"

    def lookup(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The table path and stats of ``key``, or ``None`` (absent, disabled or unreadable)."""
        if self.root is None:
            return None
        table, stats = self._paths(key)
        try:
            doc = json.loads(stats.read_text(encoding="utf-8"))
            if doc.get("memo_key") != key or not table.is_file():
                return None
        except (OSError, ValueError):
            return None
        return table, doc

    def store(self, key: str, table: Path, stats: Mapping[str, Any]) -> None:
        """Record a finished stage (best effort: a memo that cannot be written is only slower)."""
        if self.root is None:
            return
        t, s = self._paths(key)
        try:
            _link_or_copy(table, t)
            atomic_write_text(s, json.dumps({**stats, "memo_key": key}, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("stage memo: could not store %s (%s); later reruns recompute it", key, exc)

    def restore(self, table_src: Path, dst: Path) -> None:
        """Link (or copy) a memo table to an output path, atomically, with a fresh mtime (an
        output older than its inputs would look outdated to Snakemake)."""
        _link_or_copy(table_src, dst)
        os.utime(dst)
