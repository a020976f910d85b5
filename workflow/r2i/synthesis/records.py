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
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from r2i.io import atomic_path

KEPT = "kept"
DROPPED = "dropped"

SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("parent_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("record", pa.string()),
        ("blob", pa.binary()),
    ]
)


@dataclass
class Row:
    item_id: str
    parent_id: str | None
    status: str
    reason: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    blob: bytes | None = None

    @property
    def kept(self) -> bool:
        return self.status == KEPT


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
    table = pa.table(
        {
            "item_id": ids,
            "parent_id": [r.parent_id for r in rows],
            "status": [r.status for r in rows],
            "reason": [r.reason for r in rows],
            "record": [json.dumps(r.record, sort_keys=True, ensure_ascii=False) for r in rows],
            "blob": [r.blob for r in rows],
        },
        schema=SCHEMA,
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_rows(path: str | Path, *, only_kept: bool = False, with_blobs: bool = True,
              with_records: bool = True) -> list[Row]:
    """Rows of a stage table; ``with_blobs``/``with_records=False`` skip reading (and parsing)
    the images and the records where only ids and verdicts are needed (the funnel)."""
    columns = [c for c in SCHEMA.names
               if (with_blobs or c != "blob") and (with_records or c != "record")]
    table = pq.read_table(path, columns=columns)
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
