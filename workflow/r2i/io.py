"""Atomic file output and small JSON/parquet helpers.

Every output is written to a temporary file in the destination directory and renamed into place,
so a job killed at any moment leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600, so
    other users and cluster jobs can read outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, only_if_changed: bool = False) -> bool:
    """Write ``data`` atomically; with ``only_if_changed`` an identical file is left untouched.

    Leaving an unchanged file alone keeps its mtime, so Snakemake sees nothing new downstream.
    Returns True when the file was written.
    """
    p = Path(path)
    if only_if_changed and p.is_file():
        try:
            if p.stat().st_size == len(data) and p.read_bytes() == data:
                return False
        except OSError:
            pass
    with atomic_path(p) as tmp:
        tmp.write_bytes(data)
    return True


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, ignoring a torn last line left by a killed writer."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_parquet(path: str | os.PathLike[str], columns: list[str] | None = None) -> Any:
    """One parquet file as a ``pyarrow.Table`` (``columns``: only these).

    Not ``pq.read_table``: that goes through ``pyarrow.dataset``, whose first import costs ~0.7 s
    of CPU (it imports pandas), paid by every job that reads a table; a single file needs none of
    it. Same table, same schema metadata.
    """
    from r2i.arrowlite import import_pyarrow

    import_pyarrow()
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)
