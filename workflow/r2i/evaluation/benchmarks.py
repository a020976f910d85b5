"""Benchmarks in one common item format, and converters from the formats we read.

Every benchmark becomes a list of :class:`EvalItem` (spec, "Evaluation": images, optional crop
images, query, reference response, optional bbox and type). Converters:

* ``zoombench``: a Hugging Face parquet file (ZoomBench, and the toy world's
  ``benchmark/zoombench_toy.parquet``) with columns ``image``, ``crop_image`` (HF ``Image``
  structs ``{"bytes", "path"}``, raw bytes or a path), the question as ``prompt`` or ``query``,
  the reference as ``answer`` or ``response``, and optional ``bbox``, ``question_type`` (or
  ``type``), ``id`` and ``options``;
* ``json``: a JSON list of ``{"images": [paths], "query", "response", "bbox"?, "type"?,
  "crop_images"?: [paths], "id"?, "options"?}`` with image paths relative to an image root.

Options of a multiple-choice item are read from ``A. ...`` lines of the query when the file
does not list them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchmarkMissingError",
    "EvalItem",
    "from_json",
    "from_zoombench_parquet",
    "load_benchmark",
    "missing_benchmark_message",
    "options_from_query",
]


@dataclass
class EvalItem:
    """One benchmark item in the common format.

    ``images`` and ``crop_images`` hold encoded image files (PNG/JPEG bytes); ``crop_images`` is
    empty when the benchmark has no crop view. ``bbox`` is the decisive region in the first
    image's pixels (x0, y0, x1, y1) when known; ``dimension`` the question type ("" if unknown).
    """

    id: str
    images: list[bytes]
    query: str
    reference: str
    crop_images: list[bytes] = field(default_factory=list)
    bbox: list[float] | None = None
    dimension: str = ""
    options: list[str] = field(default_factory=list)

    def view_images(self, view: str) -> list[bytes]:
        """The images shown in ``view`` (``full``/``tool``: the images; ``crop``: the crops)."""
        if view == "crop":
            if not self.crop_images:
                raise ValueError(f"item {self.id!r} has no crop image (needed by the crop view)")
            return self.crop_images
        return self.images


class BenchmarkMissingError(FileNotFoundError):
    """A benchmark's file is not there; the message says how to get it."""


_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):]\s+(.+?)\s*$", re.MULTILINE)


def options_from_query(query: str) -> list[str]:
    """Option texts of ``A. x`` / ``(B) y`` lines in ``query``, in letter order (A, B, ... only
    when consecutive from A); ``[]`` for an open question."""
    found = _OPTION_LINE.findall(query or "")
    out: list[str] = []
    for letter, text in found:
        if ord(letter) - ord("A") != len(out):
            break
        out.append(text)
    return out if len(out) >= 2 else []


def missing_benchmark_message(name: str, fmt: str, path: str | os.PathLike[str]) -> str:
    """What to tell the user when benchmark ``name``'s file ``path`` is missing."""
    where = f"benchmark '{name}': file {path} not found. "
    p = str(path)
    if "toy" in name or "toy/benchmark" in p:
        return where + ("It is the toy world's benchmark: enable toy_world in the config and run "
                        "`snakemake -c 1 toy_world` (or generate the world with r2i.toy.world).")
    if fmt == "zoombench":
        return where + ("Download inclusionAI/ZoomBench from Hugging Face, e.g. "
                        "`huggingface-cli download inclusionAI/ZoomBench --repo-type dataset "
                        f"--local-dir <dir>`, and set benchmarks.{name}.path to its parquet file "
                        f"(configured: {p}).")
    return where + (f"Put the benchmark's JSON list at {p} (format 'json': "
                    "[{\"images\": [...], \"query\", \"response\", \"bbox\"?, \"type\"?}]) and its "
                    f"images under benchmarks.{name}.image_root.")


def _image_bytes(value: Any, root: Path | None = None) -> list[bytes]:
    """Encoded image bytes from an HF Image struct, bytes, a path, or a list of those."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        return [bytes(value)]
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data is not None:
            return [bytes(data)]
        if value.get("path"):
            return _image_bytes(str(value["path"]), root)
        return []
    if isinstance(value, str | os.PathLike):
        p = Path(value)
        if root is not None and not p.is_absolute():
            p = root / p
        return [p.read_bytes()]
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, Sequence):
        return [b for v in value for b in _image_bytes(v, root)]
    raise TypeError(f"cannot read an image from {type(value).__name__}")


def _bbox(value: Any) -> list[float] | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else None
        if value is None:
            return None
    vals = [float(v) for v in value]
    if len(vals) == 1 and isinstance(value[0], Sequence):  # [[x0, y0, x1, y1]]
        vals = [float(v) for v in value[0]]
    if len(vals) != 4:
        raise ValueError(f"bbox must have 4 numbers, got {value!r}")
    return vals


def _first(row: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if n in row and row[n] is not None:
            v = row[n]
            if isinstance(v, float) and v != v:  # NaN from pandas
                continue
            return v
    return None


def _options(value: Any, query: str) -> list[str]:
    if value is not None:
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else []
        opts = [str(v) for v in value]
        if opts:
            return opts
    return options_from_query(query)


def _item(row: Mapping[str, Any], index: int, root: Path | None, source: str) -> EvalItem:
    query = _first(row, "prompt", "query", "question")
    reference = _first(row, "answer", "response")
    if query is None or reference is None:
        raise ValueError(f"{source}: item {index} needs a question (prompt/query) and an answer "
                         f"(answer/response); it has {sorted(row)}")
    images = _image_bytes(_first(row, "image", "images"), root)
    if not images:
        raise ValueError(f"{source}: item {index} has no image")
    query = str(query)
    return EvalItem(
        id=str(_first(row, "id", "question_id", "index") if _first(row, "id", "question_id", "index")
               is not None else index),
        images=images,
        crop_images=_image_bytes(_first(row, "crop_image", "crop_images"), root),
        query=query,
        reference=str(reference).strip(),
        bbox=_bbox(_first(row, "bbox")),
        dimension=str(_first(row, "question_type", "type", "category", "dimension") or ""),
        options=_options(_first(row, "options"), query),
    )


def from_zoombench_parquet(path: str | os.PathLike[str]) -> list[EvalItem]:
    """Items of a ZoomBench-shaped parquet file (both column spellings, see the module doc)."""
    import pandas as pd

    df = pd.read_parquet(path)
    rows = df.to_dict(orient="records")
    return [_item(r, i, Path(path).parent, str(path)) for i, r in enumerate(rows)]


def from_json(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None
              ) -> list[EvalItem]:
    """Items of a generic JSON benchmark; relative image paths are taken from ``image_root``
    (default: the JSON file's folder)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a JSON benchmark must be a list of items")
    root = Path(image_root) if image_root else Path(path).parent
    return [_item(r, i, root, str(path)) for i, r in enumerate(data)]


def load_benchmark(name: str, spec: Mapping[str, Any]) -> list[EvalItem]:
    """Items of the benchmark ``name`` configured as ``spec`` (``benchmarks.<name>``: ``format``,
    ``path``, ``image_root``). Raises :class:`BenchmarkMissingError` when its file is missing."""
    fmt = str(spec.get("format", "zoombench"))
    path = Path(str(spec["path"]))
    if not path.exists():
        raise BenchmarkMissingError(missing_benchmark_message(name, fmt, path))
    if fmt == "zoombench":
        items = from_zoombench_parquet(path)
    elif fmt == "json":
        items = from_json(path, spec.get("image_root"))
    else:
        raise ValueError(f"benchmark '{name}': unknown format {fmt!r} (zoombench, json)")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark '{name}': item ids are not unique")
    return items
