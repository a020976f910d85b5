"""Stage 7: gather the shards into a verl-ready training set, with funnel, card and a contamination check.

Rows follow verl's ``RLHFDataset`` schema: ``data_source``, ``prompt`` (chat list whose user text
carries an ``<image>`` placeholder), ``images`` (embedded bytes), ``ability``,
``reward_model.ground_truth`` and ``extra_info`` (question, dimension, boxes, provenance, and the
prompt budget: stored ``image_size``, ``prompt_text_tokens``, ``prompt_tokens``).

Prompt budget (:mod:`r2i.train.budget`): each boxed image is stored resized to at most
``synthesis.dataset.max_pixels`` (the training ``max_pixels``), so what verl feeds the student is
what the set holds; each row carries an upper bound of its prompt length in tokens, and a row
above ``synthesis.dataset.max_prompt_length`` (when set) is dropped with reason
``prompt_too_long``, counted in funnel.json, instead of vanishing in verl's overlong filter.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from r2i.images import decode_image, encode_png, resize_to_max_pixels
from r2i.io import atomic_path, atomic_write_text, read_json, write_json
from r2i.prompts import PromptTemplate, load_template
from r2i.synthesis.records import Row, read_rows
from r2i.train.budget import prompt_token_bound, text_token_bound

DIMENSION_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("counting", re.compile(r"\bhow many\b|\bnumber of\b|\bcount\b", re.I)),
    ("ocr", re.compile(r"\btext\b|\bwritten\b|\bword\b|\bletters?\b|\bread\b|\blabel(?:led)?\b|\bprinted\b|\bdigits?\b|\bcode\b|\bsays?\b", re.I)),
    ("color", re.compile(r"\bcolou?rs?\b", re.I)),
    ("material", re.compile(r"\bmaterial\b|\btexture\b|\bpattern\b|\bsurface\b|\bmade of\b|\bfabric\b", re.I)),
    ("structure", re.compile(r"\bshape\b|\bstructure\b|\bform\b|\bsides?\b|\bgeometric\b|\boutline\b", re.I)),
    ("object_identification", re.compile(r"\bwhat (?:kind|type|sort) of\b|\bwhat object\b|\bwhat is (?:the|this)\b|\bidentify\b|\bicon\b|\bsymbol\b", re.I)),
]  # fmt: skip


def classify_dimension(question: str) -> str:
    """A keyword heuristic mapping a question to one of ZoomBench's six dimensions (or ``other``).

    The head of the question (before its first " the ") decides first, so that words in the
    referring expression ("the sign reading EXIT") do not override what is asked ("What color").
    """
    head = re.split(r"\bthe\b", question, maxsplit=1, flags=re.I)[0]
    for text in (head, question):
        for name, pattern in DIMENSION_PATTERNS:
            if pattern.search(text):
                return name
    return "other"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pixel_sha256(data: bytes | str | Path) -> str | None:
    """Hash of the decoded RGB pixels: catches the same image re-encoded in another file format."""
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img.load()
        rgb = img.convert("RGB")
    except Exception:
        return None
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


class PixelHashes:
    """Pixel hashes by file-byte hash, remembered across runs (``path``: a JSON file) and within
    one: a benchmark repeats each full image in every row that asks about it, and the pool images
    are the same from one dataset job to the next, so each distinct image is decoded once ever."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._map: dict[str, str | None] = {}
        self._dirty = False
        if self.path is not None:
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self._map = {str(k): v for k, v in loaded.items() if v is None or isinstance(v, str)}
            except (OSError, ValueError):
                pass  # absent or damaged: a miss, rebuilt below

    def get(self, file_sha: str, data: bytes | str | Path) -> str | None:
        if file_sha not in self._map:
            self._map[file_sha] = pixel_sha256(data)
            self._dirty = True
        return self._map[file_sha]

    def save(self) -> None:
        if self.path is not None and self._dirty:
            with contextlib.suppress(OSError):  # only a cache
                atomic_write_text(self.path, json.dumps(self._map, sort_keys=True))


def _benchmark_items(name: str, spec: Mapping[str, Any]) -> list[Any]:
    """The benchmark's items through the evaluation's own loader (every parquet shard, JSON
    images looked up as it does); a missing benchmark names its config key."""
    from r2i.evaluation.benchmarks import BenchmarkMissingError, load_benchmark

    try:
        return list(load_benchmark(name, spec))
    except BenchmarkMissingError as err:
        raise FileNotFoundError(f"{err} (config key benchmarks.{name}.path; or remove the "
                                "benchmark from the config)") from None


def benchmark_hashes(benchmarks: Mapping[str, Mapping[str, Any]],
                     pixels_memo: PixelHashes | None = None) -> dict[str, dict[str, set[str]]]:
    """Per benchmark: the file-byte and pixel hashes of every image it contains."""
    memo = pixels_memo if pixels_memo is not None else PixelHashes()
    out: dict[str, dict[str, set[str]]] = {}
    for name, spec in benchmarks.items():
        items = _benchmark_items(name, spec)
        files: set[str] = set()
        pixels: set[str] = set()
        for it in items:
            for data in [*it.images, *it.crop_images]:
                fsha = hashlib.sha256(data).hexdigest()
                files.add(fsha)
                px = memo.get(fsha, data)
                if px:
                    pixels.add(px)
        out[name] = {"files": files, "pixels": pixels}
    return out


def _header_size(data: bytes | str | Path) -> tuple[int, int] | None:
    """(width, height) from an image's header (no decode); None if it does not open."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return im.size
    except Exception:
        return None


def contamination_index(benchmarks: Mapping[str, Mapping[str, Any]],
                        pool_images: Sequence[tuple[str, str]],
                        pixel_hashes: str | Path | None = None) -> dict[str, Any]:
    """What the contamination check compares: per benchmark the file hashes of its images and
    the pixel hashes of those that could equal a pool image, and the pixel hash of every kept
    pool image (``(file sha256, path)`` pairs) that could equal a benchmark image.

    Two images with equal pixels have equal sizes, so only images whose size (read from the
    header) occurs on both sides are decoded; the others cannot match by pixels and are compared
    by file hash only, which is exact. Its own job (rule ``contamination_index``), which runs
    while the synthesis jobs wait for their models, so the dataset job decodes nothing."""
    memo = PixelHashes(pixel_hashes)
    bench_imgs: dict[str, list[tuple[str, bytes, tuple[int, int] | None]]] = {}
    for name, spec in benchmarks.items():
        items = _benchmark_items(name, spec)
        seen: dict[str, tuple[str, bytes, tuple[int, int] | None]] = {}
        for it in items:
            for data in [*it.images, *it.crop_images]:
                fsha = hashlib.sha256(data).hexdigest()
                if fsha not in seen:
                    seen[fsha] = (fsha, data, _header_size(data))
        bench_imgs[name] = list(seen.values())
    pool = [(sha, path, _header_size(path) if Path(path).exists() else None)
            for sha, path in pool_images]
    common = ({s for imgs in bench_imgs.values() for _, _, s in imgs if s}
              & {s for _, _, s in pool if s})
    out_b = {}
    for name, imgs in bench_imgs.items():
        pixels = {memo.get(fsha, data) for fsha, data, size in imgs if size in common}
        out_b[name] = {"files": sorted(f for f, _, _ in imgs), "pixels": sorted(p for p in pixels if p)}
    pool_pixels = {sha: (memo.get(sha, path) if size in common else None)
                   for sha, path, size in pool}
    memo.save()
    return {"benchmarks": out_b, "pool_pixels": pool_pixels,
            "decoded_sizes": sorted(list(s) for s in common)}


def _split_key(image_hash: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{image_hash}".encode()).hexdigest()


def assign_splits(image_hashes: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Split by source image (no image in both splits); at least one val image when asked for."""
    uniq = sorted(set(image_hashes), key=lambda h: _split_key(h, seed))
    n_val = round(val_fraction * len(uniq))
    if val_fraction > 0 and n_val == 0 and len(uniq) > 1:
        n_val = 1
    return {h: ("val" if i < n_val else "train") for i, h in enumerate(uniq)}


#: synthesis.dataset defaults of the prompt budget (the method's training pixel bounds).
BUDGET_DEFAULTS = {"min_pixels": 262144, "max_pixels": 16777216, "max_prompt_length": None}


def fit_to_budget(r: Row, fmt: PromptTemplate, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The stored image (resized to at most ``max_pixels``, Lanczos; PNG) and the prompt-length
    bound of one item: ``{blob, image_size, image_scale, prompt_text_tokens, prompt_tokens}``."""
    s = {**BUDGET_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    text = fmt.render(question=r.record["mcq_text"])
    blob, size, scale = r.blob, None, 1.0
    if r.blob is not None:
        with Image.open(io.BytesIO(r.blob)) as head:  # the size from the header: no decode
            size = head.size
        if size[0] * size[1] > int(s["max_pixels"]):  # decoded only when it must be resized
            img = decode_image(r.blob, name=r.item_id)
            fitted = resize_to_max_pixels(img, int(s["max_pixels"]))
            blob, scale, size = encode_png(fitted), fitted.width / img.width, fitted.size
    return {"blob": blob, "image_size": list(size) if size else None, "image_scale": scale,
            "prompt_text_tokens": text_token_bound(text),
            "prompt_tokens": prompt_token_bound(text, size, int(s["min_pixels"]),
                                                int(s["max_pixels"]))}


def to_verl_row(r: Row, index: int, split: str, fmt: PromptTemplate, settings: Mapping[str, Any],
                fit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    rec = r.record
    text = fmt.render(question=rec["mcq_text"])
    fit = fit or fit_to_budget(r, fmt, settings)
    return {
        "data_source": settings["data_source"],
        "prompt": [{"role": "user", "content": "<image>" + text}],
        "images": [{"bytes": fit["blob"], "path": None}],
        "ability": settings["ability"],
        "reward_model": {"style": "rule", "ground_truth": rec["answer_letter"]},
        "extra_info": {
            "split": split,
            "index": index,
            "item_id": r.item_id,
            "question": rec["question"],
            "focus_question": rec["focus_question"],
            "options": rec["options"],
            "answer": rec["answer_letter"],
            "answer_text": rec["ground_truth"],
            "dimension": classify_dimension(rec["question"]),
            "box": [float(x) for x in rec["crop_box"]],
            "box_expanded": [float(x) for x in rec["box_expanded"]],
            "image_hash": rec["image_hash"],
            "source_path": rec["image_path"],
            "pool": rec.get("pool") or "",
            "object_phrase": rec["phrase"],
            "agreement": float(rec["agreement"]),
            "student_correct": int(rec["student_correct"]),
            "teacher_models": sorted({v["model"] for v in rec["votes"]}),
            "image_size": fit["image_size"],
            "image_scale": float(fit["image_scale"]),
            "prompt_text_tokens": int(fit["prompt_text_tokens"]),
            "prompt_tokens": int(fit["prompt_tokens"]),
            "provenance": json.dumps(
                {k: rec.get(k) for k in (
                    "lister_model", "writer_model", "consensus_model", "student_model", "judge_model",
                    "prompt_sha", "writer_prompt_sha", "validator_prompt_sha", "answer_prompt_sha",
                    "consensus_prompt_sha", "distractor_prompt_sha", "votes", "student_samples",
                    "score", "segmenter",
                )},
                sort_keys=True,
            ),
        },
    }


def write_verl_parquet(path: str | Path, rows: list[dict[str, Any]]) -> None:
    schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            (
                "extra_info",
                pa.struct(
                    [
                        ("split", pa.string()), ("index", pa.int64()), ("item_id", pa.string()),
                        ("question", pa.string()), ("focus_question", pa.string()),
                        ("options", pa.list_(pa.string())), ("answer", pa.string()),
                        ("answer_text", pa.string()), ("dimension", pa.string()),
                        ("box", pa.list_(pa.float64())), ("box_expanded", pa.list_(pa.float64())),
                        ("image_hash", pa.string()), ("source_path", pa.string()), ("pool", pa.string()),
                        ("object_phrase", pa.string()), ("agreement", pa.float64()),
                        ("student_correct", pa.int64()), ("teacher_models", pa.list_(pa.string())),
                        ("image_size", pa.list_(pa.int64())), ("image_scale", pa.float64()),
                        ("prompt_text_tokens", pa.int64()), ("prompt_tokens", pa.int64()),
                        ("provenance", pa.string()),
                    ]
                ),
            ),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=256)


def build_funnel(manifest_summary: Mapping[str, Any], tables: Mapping[str, list[Row]]) -> dict[str, Any]:
    """Items in and out of every filter, with reasons, summed over shards."""
    funnel: dict[str, Any] = {"manifest": manifest_summary, "stages": []}
    for stage, rows in tables.items():
        reasons = Counter(r.reason for r in rows if not r.kept)
        funnel["stages"].append(
            {
                "stage": stage,
                "rows": len(rows),
                "kept": sum(r.kept for r in rows),
                "dropped": sum(reasons.values()),
                "reasons": dict(sorted(reasons.items())),
            }
        )
    return funnel


CARD = """# R2I training set: run `{run}`

Region-to-Image distilled multiple-choice VQA for fine-grained perception, built by the R2I
workflow. Teachers answered questions on micro-crops; each question was distilled back onto the
full image with a red box and kept only if the student found it hard.

| split | items | source images |
|---|---|---|
| train | {n_train} | {img_train} |
| val | {n_val} | {img_val} |

Dimensions (keyword heuristic on the question): {dims}

## Models
{models}

## Funnel
| stage | rows | kept | dropped | reasons |
|---|---|---|---|---|
{funnel_rows}

Images scanned: {scanned}; kept after the manifest: {manifest_kept}; dropped: {manifest_dropped}.
Benchmark contamination (content hash): {contaminated} item(s) removed; checked against: {benchmarks}.

## Schema (verl `RLHFDataset`)
`data_source`, `prompt` (chat list; the user text starts with `<image>`), `images` (list of
`{{bytes, path}}`, the boxed full image), `ability`, `reward_model.ground_truth` (the correct option
letter), `extra_info` (question, options, answer text, dimension, box, expanded box, source image
hash and path, agreement, student correct count, provenance JSON with models, prompt hashes, votes).

```python
import datasets
ds = datasets.load_dataset("parquet", data_files={{"train": "train.parquet", "validation": "val.parquet"}})
```
{sim_note}"""


class EmptyDatasetError(RuntimeError):
    """The run produced no training item (and ``synthesis.dataset.allow_empty`` is off)."""


def funnel_text(funnel: Mapping[str, Any]) -> str:
    """The funnel as a few lines: where the items went (for errors and warnings)."""
    m = funnel.get("manifest", {})
    lines = [f"  manifest: {m.get('files', '?')} files scanned, {m.get('kept', '?')} kept, "
             f"dropped {m.get('by_reason', m.get('dropped', '?'))}"]
    for st in funnel.get("stages", []):
        lines.append(f"  {st['stage']}: {st['rows']} rows, {st['kept']} kept, dropped "
                     f"{st['reasons'] or 0}")
    lines.append(f"  contamination: {funnel.get('contamination', {}).get('removed', 0)} removed; "
                 f"splits: {funnel.get('splits')}")
    return "\n".join(lines)


def check_not_empty(funnel: Mapping[str, Any], *, allow_empty: bool) -> None:
    """Fail (or, when allowed, warn loudly) if the training split is empty.

    An empty set is almost always a setting or an input problem (pools in the wrong place, a
    threshold that drops everything); finishing with exit 0 would hide it until training fails.
    """
    if funnel.get("splits", {}).get("train", 0) > 0:
        return
    msg = ("the training set is EMPTY: no item passed every filter. Funnel:\n" + funnel_text(funnel)
           + "\nCheck the pools, the thresholds of the stage that dropped everything, and the "
           "endpoints' logs; set synthesis.dataset.allow_empty: true to accept an empty set.")
    if not allow_empty:
        raise EmptyDatasetError(msg)
    logging.getLogger("r2i.dataset").warning(
        "%s\n(synthesis.dataset.allow_empty is true: continuing with an empty set)", msg)


def gather(
    *,
    shard_root: str | Path,
    shards: Sequence[str],
    stages: Sequence[str],
    manifest_summary_path: str | Path,
    benchmarks: Mapping[str, Mapping[str, Any]],
    answer_format_path: str | Path,
    settings: Mapping[str, Any],
    run: str,
    models: Mapping[str, str],
    simulated: bool,
    out_train: str | Path,
    out_val: str | Path,
    out_card: str | Path,
    out_funnel: str | Path,
    out_contamination: str | Path,
    pixel_hashes: str | Path | None = None,
    index: str | Path | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the dataset (see the module docstring). ``index``: the contamination index
    (:func:`contamination_index`, or its JSON file); without it the hashes are computed here,
    remembering decoded-pixel hashes in ``pixel_hashes`` (a JSON file) between runs."""
    tables: dict[str, list[Row]] = {}
    for stage in stages:
        rows: list[Row] = []
        last = stage == stages[-1]
        for shard in shards:
            # earlier stages only feed the funnel: their records and images are not read
            rows.extend(read_rows(Path(shard_root) / shard / f"{stage}.parquet",
                                  with_blobs=last, with_records=last))
        tables[stage] = rows
    final = [r for r in tables[stages[-1]] if r.kept]

    if index is None:
        index = contamination_index(
            benchmarks, sorted({(r.record["image_hash"], r.record["image_path"]) for r in final}),
            pixel_hashes)
    elif not isinstance(index, Mapping):
        index = read_json(index)
    bench = {name: {"files": set(h["files"]), "pixels": set(h["pixels"])}
             for name, h in index["benchmarks"].items()}
    missing = sorted(set(benchmarks) - set(bench))
    if missing:
        raise ValueError(f"the contamination index has no entry for benchmark(s) {missing}; "
                         "rerun the contamination_index job")
    pool_pixels: Mapping[str, str | None] = index["pool_pixels"]
    memo = PixelHashes(pixel_hashes)
    contaminated: list[dict[str, str]] = []
    clean: list[Row] = []
    for r in final:
        h = r.record["image_hash"]  # the sha256 of the source file's bytes (manifest)
        if h in pool_pixels:
            px = pool_pixels[h]
        else:
            px = memo.get(h, r.record["image_path"]) if Path(r.record["image_path"]).exists() else None
        hit = [
            name for name, hs in bench.items()
            if h in hs["files"] or (px is not None and px in hs["pixels"])
        ]  # fmt: skip
        if hit:
            contaminated.append({"item_id": r.item_id, "image_hash": h, "benchmarks": ",".join(hit)})
        else:
            clean.append(r)

    fmt = load_template(answer_format_path, "answer_format")
    limit = settings.get("max_prompt_length")
    fits: dict[str, dict[str, Any]] = {}
    budget_rows: list[Row] = []
    fitting: list[Row] = []
    for r in clean:
        fit = fit_to_budget(r, fmt, settings)
        if limit is not None and fit["prompt_tokens"] > int(limit):
            budget_rows.append(Row(r.item_id, r.item_id, "dropped", "prompt_too_long",
                                   {"prompt_tokens": fit["prompt_tokens"]}))
            continue
        fits[r.item_id] = fit
        fitting.append(r)
        budget_rows.append(Row(r.item_id, r.item_id, "kept"))
    clean = fitting

    splits = assign_splits([r.record["image_hash"] for r in clean], settings["val_fraction"], settings["seed"])
    item_split = {r.item_id: splits[r.record["image_hash"]] for r in clean}
    split_unit = "image"
    if settings["val_fraction"] > 0 and len(clean) > 1 and "val" not in item_split.values():
        # Too few source images to hold one out (tiny runs): hold out items instead, and say so.
        split_unit = "item"
        ranked = sorted(clean, key=lambda r: _split_key(r.item_id, settings["seed"]))
        n_val = max(1, round(settings["val_fraction"] * len(clean)))
        item_split.update({r.item_id: "val" for r in ranked[:n_val]})
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for r in sorted(clean, key=lambda x: x.item_id):
        split = item_split[r.item_id]
        out[split].append(to_verl_row(r, len(out[split]), split, fmt, settings, fits[r.item_id]))
    memo.save()
    write_verl_parquet(out_train, out["train"])
    write_verl_parquet(out_val, out["val"])

    funnel = build_funnel(read_json(manifest_summary_path), {**tables, "prompt_budget": budget_rows})
    funnel["contamination"] = {"removed": len(contaminated)}
    b = {**BUDGET_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    funnel["prompt_budget"] = {
        "max_pixels": int(b["max_pixels"]), "min_pixels": int(b["min_pixels"]),
        "max_prompt_length": limit,
        "resized_images": sum(1 for f in fits.values() if f["image_scale"] < 1.0),
        "largest_prompt_tokens": max((f["prompt_tokens"] for f in fits.values()), default=0),
        "dropped_prompt_too_long": sum(1 for r in budget_rows if not r.kept),
    }
    funnel["splits"] = {k: len(v) for k, v in out.items()}
    funnel["split_unit"] = split_unit
    check_not_empty(funnel, allow_empty=bool(settings.get("allow_empty", False)))
    write_json(out_funnel, funnel)
    write_json(
        out_contamination,
        {"checked_against": sorted(benchmarks), "contaminated": contaminated, "clean": len(clean)},
    )

    dims = Counter(row["extra_info"]["dimension"] for rows in out.values() for row in rows)
    model_lines = "\n".join(f"- {role}: `{name}`" for role, name in models.items())
    manifest = funnel["manifest"]
    card = CARD.format(
        run=run,
        n_train=len(out["train"]), n_val=len(out["val"]),
        img_train=len({r["extra_info"]["image_hash"] for r in out["train"]}),
        img_val=len({r["extra_info"]["image_hash"] for r in out["val"]}),
        dims=", ".join(f"{k} {v}" for k, v in sorted(dims.items())) or "none",
        models=model_lines,
        funnel_rows="\n".join(
            f"| {s['stage']} | {s['rows']} | {s['kept']} | {s['dropped']} | "
            + (", ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-") + " |"
            for s in funnel["stages"]
        ),
        scanned=manifest.get("files", "?"), manifest_kept=manifest.get("kept", "?"),
        manifest_dropped=manifest.get("dropped", "?"),
        contaminated=len(contaminated), benchmarks=", ".join(sorted(benchmarks)) or "none",
        sim_note=(
            "\n> This set was built from the TOY WORLD with SIMULATED models (test doubles / offline "
            "demo). It exercises the pipeline; it is not training data for real models.\n"
            if simulated else ""
        ),
    )  # fmt: skip
    atomic_write_text(out_card, card)
    return funnel
