"""Stage tables: one parquet file per shard and stage.

Columns: ``item_id`` (unique, stable across reruns), ``parent_id`` (the item it came from),
``status`` (``kept`` / ``dropped``), ``reason`` (why dropped), ``record`` (the item's fields as
JSON, so stages can add fields without schema migrations) and ``blob`` (optional image bytes,
e.g. the crop). Written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from r2i.arrowlite import import_pyarrow
from r2i.io import atomic_path, read_parquet

KEPT = "kept"
DROPPED = "dropped"

COLUMNS = ("item_id", "parent_id", "status", "reason", "record", "blob")


@cache
def schema() -> Any:
    """The stage tables' ``pyarrow`` schema. pyarrow (with numpy, ~0.2 s) is imported on first
    use, not with this module: a synthesis job sends its first model requests before it needs it."""
    pa = import_pyarrow()
    return pa.schema([*((c, pa.string()) for c in COLUMNS[:-1]), ("blob", pa.binary())])


@dataclass
class Row:
    """One item of a stage table. ``blob`` (a crop or boxed image, often megabytes) is left out of
    the repr, so an error message or log line that shows a row stays a line."""

    item_id: str
    parent_id: str | None
    status: str
    reason: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    blob: bytes | None = field(default=None, repr=False)

    @property
    def kept(self) -> bool:
        return self.status == KEPT


def prewarm_in_background() -> None:
    """Import pyarrow and its parquet module in a daemon thread, so that the table writes at the
    end of a job do not wait for the import (~0.2 s, longer on a loaded machine). Harmless if
    the job reaches its writes first: the import lock makes them wait for the same import."""
    import threading

    def warm() -> None:
        schema()
        import pyarrow.parquet  # noqa: F401

    threading.Thread(target=warm, name="r2i-pyarrow-prewarm", daemon=True).start()


def kept(item_id: str, parent_id: str | None, record: dict[str, Any], blob: bytes | None = None) -> Row:
    return Row(item_id, parent_id, KEPT, None, record, blob)


def dropped(item_id: str, parent_id: str | None, reason: str, record: dict[str, Any] | None = None) -> Row:
    return Row(item_id, parent_id, DROPPED, reason, record or {}, None)


def write_rows(path: str | Path, rows: Iterable[Row]) -> None:
    """Write rows sorted by item id (so output bytes do not depend on completion order)."""
    rows = sorted(rows, key=lambda r: r.item_id)
    ids = [r.item_id for r in rows]
    if len(ids) != len(set(ids)):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"{path}: duplicate item ids {dupes}")
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "item_id": ids,
            "parent_id": [r.parent_id for r in rows],
            "status": [r.status for r in rows],
            "reason": [r.reason for r in rows],
            "record": [json.dumps(r.record, sort_keys=True, ensure_ascii=False) for r in rows],
            "blob": [r.blob for r in rows],
        },
        schema=schema(),
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_rows(path: str | Path, *, only_kept: bool = False, with_blobs: bool = True,
              with_records: bool = True) -> list[Row]:
    """Rows of a stage table; ``with_blobs``/``with_records=False`` skip reading (and parsing)
    the images and the records where only ids and verdicts are needed (the funnel)."""
    columns = [c for c in COLUMNS
               if (with_blobs or c != "blob") and (with_records or c != "record")]
    table = read_parquet(path, columns=columns)
    data = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        row = Row(
            item_id=data["item_id"][i],
            parent_id=data["parent_id"][i],
            status=data["status"][i],
            reason=data["reason"][i],
            record=json.loads(data["record"][i]) if with_records else {},
            blob=data["blob"][i] if with_blobs else None,
        )
        if not only_kept or row.kept:
            out.append(row)
    return out
