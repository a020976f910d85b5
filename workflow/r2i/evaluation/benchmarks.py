"""Benchmarks in one common item format, and converters from the formats we read.

Every benchmark becomes a list of :class:`EvalItem` (spec, "Evaluation": images, optional crop
images, query, reference response, optional bbox and type). Converters:

* ``zoombench``: Hugging Face parquet (ZoomBench, and the toy world's
  ``benchmark/zoombench_toy.parquet``): ``path`` is one file, a folder (every ``*.parquet`` under
  it: a dataset saved in several shards), a glob pattern, or a list of those; all shards are read
  in sorted order. Columns ``image``, ``crop_image`` (HF ``Image`` structs ``{"bytes", "path"}``,
  raw bytes or a path), the question as ``prompt`` or ``query``, the reference as ``answer`` or
  ``response``, and optional ``bbox``, ``question_type`` (or ``type``), ``id`` and ``options``.
  A row without a crop image is kept: the crop view skips it (counted in metrics.json);
* ``json``: a JSON list of ``{"images": [paths], "query", "response", "bbox"?, "type"?,
  "crop_images"?: [paths], "id"?, "options"?}``. A relative image path is looked up under
  ``image_root`` when it is given, then relative to the JSON file's folder; a missing image fails
  naming the item and every path tried.

``<image>`` placeholders (LLaVA-style JSON benchmarks carry them) are removed from the query, as
the paper's reference scripts do: the images travel as message parts. Options of a
multiple-choice item are read from ``A. ...`` lines of the query when the file does not list them.
"""

from __future__ import annotations

import glob
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
    "benchmark_input_files",
    "clean_query",
    "from_json",
    "from_zoombench_parquet",
    "load_benchmark",
    "missing_benchmark_message",
    "options_from_query",
    "resolve_parquet_files",
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
                        f"--local-dir <dir>`, and set benchmarks.{name}.path to its parquet file, "
                        f"its folder of shards, a glob or a list (configured: {p}).")
    return where + (f"Put the benchmark's JSON list at {p} (format 'json': "
                    "[{\"images\": [...], \"query\", \"response\", \"bbox\"?, \"type\"?}]) and its "
                    f"images under benchmarks.{name}.image_root.")


def _image_bytes(value: Any, roots: Sequence[Path] = (), where: str = "") -> list[bytes]:
    """Encoded image bytes from an HF Image struct, bytes, a path, or a list of those.

    A relative path is looked up under each of ``roots`` in turn; a missing file raises
    :class:`FileNotFoundError` naming ``where`` (the item) and every path tried.
    """
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        return [bytes(value)]
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data is not None:
            return [bytes(data)]
        if value.get("path"):
            return _image_bytes(str(value["path"]), roots, where)
        return []
    if isinstance(value, str | os.PathLike):
        p = Path(value)
        tried = [p] if p.is_absolute() or not roots else [r / p for r in roots]
        for cand in tried:
            if cand.is_file():
                return [cand.read_bytes()]
        raise FileNotFoundError(f"{where}: image {os.fspath(value)!r} not found (tried "
                                f"{', '.join(str(t) for t in tried)})")
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, Sequence):
        return [b for v in value for b in _image_bytes(v, roots, where)]
    raise TypeError(f"{where}: cannot read an image from {type(value).__name__}")


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


_IMAGE_TAG = re.compile(r"<image>", re.IGNORECASE)


def clean_query(query: str) -> str:
    """``query`` without ``<image>`` placeholders (whitespace at the ends trimmed), as the
    reference's inference scripts send it; the images travel as separate message parts."""
    return _IMAGE_TAG.sub("", query or "").strip()


def _item(row: Mapping[str, Any], index: int, roots: Sequence[Path], source: str) -> EvalItem:
    query = _first(row, "prompt", "query", "question")
    reference = _first(row, "answer", "response")
    if query is None or reference is None:
        raise ValueError(f"{source}: item {index} needs a question (prompt/query) and an answer "
                         f"(answer/response); it has {sorted(row)}")
    raw_id = _first(row, "id", "question_id", "index")
    item_id = str(raw_id if raw_id is not None else index)
    where = f"{source}: item {item_id}"
    images = _image_bytes(_first(row, "image", "images"), roots, where)
    if not images:
        raise ValueError(f"{where} has no image")
    query = clean_query(str(query))
    return EvalItem(
        id=item_id,
        images=images,
        crop_images=_image_bytes(_first(row, "crop_image", "crop_images"), roots, where),
        query=query,
        reference=str(reference).strip(),
        bbox=_bbox(_first(row, "bbox")),
        dimension=str(_first(row, "question_type", "type", "category", "dimension") or ""),
        options=_options(_first(row, "options"), query),
    )


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)


def resolve_parquet_files(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                          ) -> list[Path]:
    """Every parquet shard ``path`` names: a file, a folder (all ``*.parquet`` under it), a glob
    pattern, or a list of those; sorted within each entry, duplicates dropped.

    Raises :class:`BenchmarkMissingError` naming the entry that matches no file.
    """
    entries = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not entries:
        raise BenchmarkMissingError("benchmark path: an empty list names no parquet file")
    out: list[Path] = []
    for entry in entries:
        text = os.fspath(entry)
        p = Path(text)
        if _has_magic(text):
            found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*.parquet") if f.is_file())
        elif p.is_file():
            found = [p]
        else:
            found = []
        if not found:
            kind = ("glob pattern" if _has_magic(text) else
                    "folder (no *.parquet inside)" if p.is_dir() else "file")
            raise BenchmarkMissingError(f"benchmark path {text}: no parquet file matches this {kind}")
        out.extend(f for f in found if f not in out)
    return out


def from_zoombench_parquet(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                           ) -> list[EvalItem]:
    """Items of a ZoomBench-shaped parquet dataset: every shard ``path`` names
    (:func:`resolve_parquet_files`), in order; both column spellings (see the module doc)."""
    from r2i.io import read_parquet

    items: list[EvalItem] = []
    for f in resolve_parquet_files(path):
        # plain Python values (lists, dicts, None), as from a JSON benchmark; not pandas, whose
        # import alone costs the contamination job ~0.8 s of CPU
        rows = read_parquet(f).to_pylist()
        items.extend(_item(r, len(items), [f.parent], str(f)) for r in rows)
    return items


def from_json(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None
              ) -> list[EvalItem]:
    """Items of a generic JSON benchmark. Relative image paths are looked up under
    ``image_root`` (when given), then relative to the JSON file's folder."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a JSON benchmark must be a list of items")
    roots = ([Path(image_root)] if image_root else []) + [Path(path).resolve().parent]
    return [_item(r, i, roots, str(path)) for i, r in enumerate(data)]


def benchmark_input_files(spec: Mapping[str, Any]) -> list[str]:
    """The files a benchmark is read from (the rules' inputs): every parquet shard of a
    ``zoombench`` path, the JSON file of a ``json`` one. Raises :class:`BenchmarkMissingError`."""
    if str(spec.get("format", "zoombench")) == "zoombench":
        return [str(p) for p in resolve_parquet_files(spec["path"])]
    path = Path(str(spec["path"]))
    if not path.is_file():
        raise BenchmarkMissingError(f"benchmark path {path}: file not found")
    return [str(path)]


def load_benchmark(name: str, spec: Mapping[str, Any]) -> list[EvalItem]:
    """Items of the benchmark ``name`` configured as ``spec`` (``benchmarks.<name>``: ``format``,
    ``path``, ``image_root``). Raises :class:`BenchmarkMissingError` when its file is missing."""
    fmt = str(spec.get("format", "zoombench"))
    raw = spec["path"]
    if fmt == "zoombench":
        try:
            files = resolve_parquet_files(raw)
        except BenchmarkMissingError as err:
            raise BenchmarkMissingError(missing_benchmark_message(name, fmt, _show(raw))
                                        + f" ({err})") from None
        items = from_zoombench_parquet(files)
    elif fmt == "json":
        path = Path(str(raw))
        if not path.exists():
            raise BenchmarkMissingError(missing_benchmark_message(name, fmt, path))
        items = from_json(path, spec.get("image_root"))
    else:
        raise ValueError(f"benchmark '{name}': unknown format {fmt!r} (zoombench, json)")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"benchmark '{name}': item ids are not unique (e.g. {dup}; with several "
                         "shards give each row an 'id' column)")
    return items


def _show(path: Any) -> str:
    return ", ".join(os.fspath(p) for p in path) if isinstance(path, list | tuple) else str(path)
