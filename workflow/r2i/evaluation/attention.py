"""Attention coverage (spec, "Evaluation", bullet "Attention coverage").

With eager attention, take the attention of the **last prompt token** to the image tokens at one
decoder layer (paper: layer 24), averaged over heads; map the ground-truth box onto the visual token
grid; coverage = attention mass inside the box / total attention on the image tokens.

Conventions (the paper's public reference script, ``utils/eval_coverage.py``; see
docs/attention.md for the comparison table):

* **Layers are 1-based**, as the paper counts them: layer 24 is the 24th decoder layer, i.e.
  ``outputs.attentions[23]``; ``-1`` is the last layer.
* **Image size**: the image is resized the way the Qwen processor expects before it sees it:
  sides rounded to multiples of ``patch * merge`` (28 for Qwen2.5-VL, 32 for Qwen3-VL) with the
  area within the processor's ``min_pixels`` and ``max_pixels`` (default cap 2048 x 1024 pixels,
  :func:`r2i.qwen_vision.smart_resize`). The processor then keeps that size, so the token grid
  maps onto the image exactly.
* **Box to grid** (``box_mapping``): ``"cells"`` (default, the reference's convention) counts every
  token cell the box touches (edges floored/ceiled, at least 2 cells per axis) as fully inside;
  ``"area"`` weights each cell by the fraction of its area inside the box. Both are computed for
  every item. Under uniform attention ``area`` gives exactly the box's share of the image, while
  ``cells`` gives the share of touched cells, which for small boxes is many times the area share
  (so ``cells`` numbers are comparable with the paper's, ``area`` numbers are the cleaner measure).

Works with Hugging Face Qwen2.5-VL and Qwen3-VL checkpoints (a base model or a merged R2I model
directory). ``torch`` and ``transformers`` are imported lazily, so importing this module (and the
pure helpers :func:`box_to_grid_mask`, :func:`resolve_layer` and :func:`heatmap_image`) needs
neither.

Grid: the processor turns the resized image into ``image_grid_thw = (1, grid_h, grid_w)`` patches
and merges ``merge x merge`` patches into one language-model token, so the image tokens form a
``(grid_h/merge, grid_w/merge)`` grid in raster order; coverage is ``sum(attn * mask) / sum(attn)``
and ``box_share`` is ``mean(mask)`` (the coverage of uniform attention).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from r2i.images import decode_image
from r2i.qwen_vision import smart_resize

__all__ = [
    "BOX_MAPPINGS",
    "DEFAULT_LAYER",
    "DEFAULT_MAX_PIXELS",
    "AttentionUnavailableError",
    "box_to_grid_mask",
    "coverage_for_benchmark",
    "coverage_for_item",
    "heatmap_image",
    "image_only_processor",
    "load_model",
    "model_input_size",
    "num_text_layers",
    "require_backend",
    "resolve_layer",
    "run_attention",
]

log = logging.getLogger(__name__)

#: The paper's layer, 1-based (the 24th decoder layer: ``outputs.attentions[23]``).
DEFAULT_LAYER = 24
DEFAULT_MAX_PIXELS = 2048 * 1024
#: Box-to-grid conventions: ``cells`` (the reference's, default) and ``area``.
BOX_MAPPINGS = ("cells", "area")


class _Stop(Exception):
    """Raised by the capture hook to skip the layers after the one we read."""


# --------------------------------------------------------------------------- pure helpers


def resolve_layer(layer: int, n_layers: int) -> int:
    """The 1-based decoder layer used for ``layer`` on a model with ``n_layers`` layers.

    ``layer >= 1`` counts like the paper (24 = the 24th layer, ``outputs.attentions[23]``) and is
    clamped to the model's depth; ``layer <= -1`` counts from the end (-1 = the last layer).
    """
    layer = int(layer)
    if layer == 0:
        raise ValueError("attention layer is 1-based (the paper's 24 = the 24th decoder layer); "
                         "0 is not a layer (use 1 for the first, -1 for the last)")
    if n_layers < 1:
        raise ValueError(f"model has {n_layers} decoder layers")
    used = layer if layer > 0 else n_layers + layer + 1
    return max(1, min(used, n_layers))


def _cells(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Cells ``[a, b)`` a span ``[lo, hi]`` (grid units) touches, at least 2 when the grid has
    them: ``floor(lo)`` to ``ceil(hi)``, grown to the right (left at the edge) when narrower."""
    a = max(0, min(n - 1, math.floor(lo)))
    b = max(a + 1, min(n, math.ceil(hi)))
    if b - a < 2:
        b = min(n, a + 2)
        a = max(0, b - 2)
    return a, b


def box_to_grid_mask(
    box_xyxy: Sequence[float],
    orig_size: tuple[int, int],
    resized_size: tuple[int, int],
    grid_hw: tuple[int, int],
    mapping: str = "cells",
) -> np.ndarray:
    """Mask (grid_h, grid_w) of the token cells covered by ``box_xyxy``.

    ``box_xyxy`` is in original-image pixels, ``orig_size`` and ``resized_size`` are (width, height)
    of the original image and of the image the processor fed to the vision tower, ``grid_hw`` the
    language-model token grid. ``mapping="cells"``: 1 for every cell the box touches (edges
    floored and ceiled, at least 2 cells per axis), else 0 (the paper's reference convention);
    ``mapping="area"``: each cell's fraction of its area inside the box.
    """
    if mapping not in BOX_MAPPINGS:
        raise ValueError(f"box_mapping must be one of {BOX_MAPPINGS}, not {mapping!r}")
    ow, oh = orig_size
    rw, rh = resized_size
    gh, gw = grid_hw
    if ow <= 0 or oh <= 0 or gh <= 0 or gw <= 0:
        raise ValueError(f"bad sizes: orig {orig_size}, grid {grid_hw}")
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    # original pixels -> resized pixels -> token-grid units
    sx, sy = rw / ow, rh / oh
    cw, ch = rw / gw, rh / gh  # pixels per token cell (patch * merge)
    gx0, gx1 = x0 * sx / cw, x1 * sx / cw
    gy0, gy1 = y0 * sy / ch, y1 * sy / ch
    if mapping == "cells":
        mask = np.zeros((gh, gw), dtype=np.float64)
        ax, bx = _cells(gx0, gx1, gw)
        ay, by = _cells(gy0, gy1, gh)
        mask[ay:by, ax:bx] = 1.0
        return mask
    cols = np.arange(gw, dtype=np.float64)
    rows = np.arange(gh, dtype=np.float64)
    fx = np.clip(np.minimum(cols + 1, gx1) - np.maximum(cols, gx0), 0.0, 1.0)
    fy = np.clip(np.minimum(rows + 1, gy1) - np.maximum(rows, gy0), 0.0, 1.0)
    return np.outer(fy, fx)


def heatmap_image(
    image: Image.Image,
    grid: np.ndarray,
    box: Sequence[float] | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """``image`` with the attention ``grid`` overlaid (red = most attention) and ``box`` outlined."""
    from PIL import ImageDraw

    base = image.convert("RGB")
    g = np.asarray(grid, dtype=np.float64)
    g = g - g.min()
    if g.max() > 0:
        g = g / g.max()
    heat = np.zeros((*g.shape, 3), dtype=np.uint8)
    heat[..., 0] = (255 * g).astype(np.uint8)
    heat[..., 2] = (255 * (1 - g)).astype(np.uint8)
    heat_im = Image.fromarray(heat, "RGB").resize(base.size, Image.Resampling.NEAREST)
    out = Image.blend(base, heat_im, alpha)
    if box is not None:
        draw = ImageDraw.Draw(out)
        lw = max(2, round(min(base.size) / 200))
        draw.rectangle([float(v) for v in box], outline=(0, 255, 0), width=lw)
    return out


# --------------------------------------------------------------------------- model side


def load_model(model_dir: str | Path, device: str | None = None, dtype: Any = None):
    """Load a Qwen2.5-VL / Qwen3-VL directory with eager attention; returns ``(model, processor)``.

    float32 on CPU, bfloat16 on GPU unless ``dtype`` says otherwise.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoProcessor

    model_dir = str(model_dir)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    cfg = AutoConfig.from_pretrained(model_dir)
    cls_by_type = {
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    }
    name = cls_by_type.get(cfg.model_type)
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        cls = transformers.AutoModelForImageTextToText
    model = cls.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    model.to(device).eval()
    processor = None
    try:
        processor = AutoProcessor.from_pretrained(model_dir)
    except Exception as exc:  # e.g. no torchvision: the video processor cannot be built
        log.info("AutoProcessor failed (%s); building an image-only processor", exc)
    if processor is None or not hasattr(processor, "image_processor"):
        # AutoProcessor may also fall back to the bare tokenizer when it cannot build the processor
        processor = image_only_processor(model_dir, cfg.model_type)
    return model, processor


def image_only_processor(model_dir: str | Path, model_type: str = "qwen2_5_vl", **parts: Any):
    """A Qwen-VL processor without a video processor (for environments without torchvision).

    Loads the tokenizer and the image processor from ``model_dir`` unless given in ``parts``
    (``tokenizer``, ``image_processor``, ``chat_template``); the chat template comes from the
    tokenizer or the directory's ``chat_template.jinja``/``chat_template.json``.
    """
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    base_name = {"qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor",
                 "qwen2_vl": "Qwen2VLProcessor"}.get(model_type, "Qwen2_5_VLProcessor")
    base = getattr(transformers, base_name)

    class _ImageOnly(base):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tok = parts.get("tokenizer") or AutoTokenizer.from_pretrained(str(model_dir))
    ip = parts.get("image_processor") or AutoImageProcessor.from_pretrained(str(model_dir))
    template = parts.get("chat_template") or getattr(tok, "chat_template", None)
    d = Path(model_dir)
    if template is None and (d / "chat_template.jinja").exists():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None and (d / "chat_template.json").exists():
        template = json.loads((d / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    return _ImageOnly(image_processor=ip, tokenizer=tok, video_processor=None, chat_template=template)


def _decoder_layers(model) -> Any:
    """The language model's decoder layers (a ModuleList)."""
    candidates = ("model.language_model.layers", "language_model.layers",
                  "model.language_model.model.layers", "language_model.model.layers",
                  "model.layers")
    for path in candidates:
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def num_text_layers(model) -> int:
    return len(_decoder_layers(model))


def _image_token_id(model, processor) -> int:
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        tid = getattr(model.config, "image_token_id", None)
    if tid is None:
        tid = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return int(tid)


def _patch_and_merge(processor) -> tuple[int, int]:
    ip = processor.image_processor
    patch = getattr(ip, "patch_size", None) or 14
    merge = getattr(ip, "merge_size", None) or 2
    if isinstance(patch, Sequence):
        patch = patch[0]
    return int(patch), int(merge)


def _processor_pixel_bounds(processor) -> tuple[int, int | None]:
    """``(min_pixels, max_pixels)`` of the processor's image processor (max None if unknown)."""
    ip = processor.image_processor
    size = getattr(ip, "size", None)

    def field(name: str) -> Any:
        if isinstance(size, Mapping):
            return size.get(name)
        return getattr(size, name, None)

    # transformers 5 keeps them in ``size`` (shortest_edge/longest_edge are pixel counts here)
    lo = getattr(ip, "min_pixels", None) or field("min_pixels") or field("shortest_edge")
    hi = getattr(ip, "max_pixels", None) or field("max_pixels") or field("longest_edge")
    return int(lo or 56 * 56), (int(hi) if hi else None)


def model_input_size(image_size: tuple[int, int], processor, max_pixels: int | None
                     ) -> tuple[int, int]:
    """(width, height) to resize an image to before the processor: sides multiples of
    ``patch * merge``, area within the processor's ``min_pixels`` and ``min(max_pixels, the
    processor's max_pixels)`` (:func:`r2i.qwen_vision.smart_resize`), so the processor keeps it."""
    patch, merge = _patch_and_merge(processor)
    lo, hi = _processor_pixel_bounds(processor)
    caps = [v for v in (max_pixels, hi) if v]
    cap = min(caps) if caps else 16384 * (patch * merge) ** 2
    w, h = image_size
    rh, rw = smart_resize(h, w, factor=patch * merge, min_pixels=min(lo, cap), max_pixels=cap)
    return rw, rh


def _prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def coverage_for_item(
    model,
    processor,
    image: Image.Image,
    question: str,
    box_xyxy: Sequence[float],
    layer: int = DEFAULT_LAYER,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    box_mapping: str = "cells",
) -> dict[str, Any]:
    """Attention coverage of ``box_xyxy`` (original-image pixels) for one image and question.

    ``layer`` is 1-based like the paper's (24 = ``outputs.attentions[23]``; negative counts from
    the end; clamped to the model's depth). Both box mappings are computed; ``coverage``,
    ``box_share`` and ``mask`` are those of ``box_mapping``.

    Returns ``coverage``, ``box_share``, ``box_mapping``, ``coverage_cells``/``coverage_area``,
    ``box_share_cells``/``box_share_area`` (the coverage of uniform attention under each mapping),
    ``layer`` (1-based, used), ``layer_index`` (0-based index into ``outputs.attentions``),
    ``layer_requested``, ``n_layers``, ``grid`` (numpy (h, w) attention over the image tokens,
    normalised to sum 1), ``mask``, ``image_attention_share`` (the last token's attention on all
    image tokens, out of 1), ``n_image_tokens``, ``orig_size``/``input_size``/``resized_size``
    (width, height: the original, what the processor got, what the vision tower saw) and
    ``grid_thw``.
    """
    import torch

    if box_mapping not in BOX_MAPPINGS:
        raise ValueError(f"box_mapping must be one of {BOX_MAPPINGS}, not {box_mapping!r}")
    orig = image.convert("RGB")
    size = model_input_size(orig.size, processor, max_pixels)
    resized_in = (orig if size == orig.size else
                  orig.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))
    text = _prompt(processor, question)
    inputs = processor(text=[text], images=[resized_in], return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}

    layers = _decoder_layers(model)
    n_layers = len(layers)
    used = resolve_layer(layer, n_layers)
    index = used - 1

    captured: dict[str, Any] = {}

    def hook(_module, _args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            return None
        # (batch, heads, q, k): keep the last query row, averaged over heads
        captured["row"] = weights[0, :, -1, :].float().mean(0).detach().cpu()
        raise _Stop

    handle = layers[index].self_attn.register_forward_hook(hook)
    out = None
    try:
        with torch.inference_mode():
            out = model(**inputs, output_attentions=True, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "row" not in captured:  # attention module did not return weights: use the model's output
        atts = getattr(out, "attentions", None)
        if not atts:
            raise RuntimeError("the model returned no attention weights (is attn_implementation eager?)")
        captured["row"] = atts[index][0, :, -1, :].float().mean(0).detach().cpu()
    row = captured["row"].numpy().astype(np.float64)

    ids = inputs["input_ids"][0].detach().cpu().numpy()
    pos = np.nonzero(ids == _image_token_id(model, processor))[0]
    thw = [int(v) for v in inputs["image_grid_thw"][0].tolist()]
    patch, merge = _patch_and_merge(processor)
    gh, gw = thw[1] // merge, thw[2] // merge
    if len(pos) != thw[0] * gh * gw:
        raise RuntimeError(f"{len(pos)} image tokens but grid_thw {thw} (merge {merge})")
    img_att = row[pos]
    total = float(img_att.sum())
    grid = img_att.reshape(thw[0], gh, gw).sum(0)
    grid = grid / total if total > 0 else np.full_like(grid, 1.0 / grid.size)
    resized = (thw[2] * patch, thw[1] * patch)
    masks = {m: box_to_grid_mask(box_xyxy, orig.size, resized, (gh, gw), m) for m in BOX_MAPPINGS}
    cov = {m: float((grid * mk).sum()) for m, mk in masks.items()}
    share = {m: float(mk.mean()) for m, mk in masks.items()}
    return {
        "coverage": cov[box_mapping],
        "box_share": share[box_mapping],
        "box_mapping": box_mapping,
        **{f"coverage_{m}": cov[m] for m in BOX_MAPPINGS},
        **{f"box_share_{m}": share[m] for m in BOX_MAPPINGS},
        "layer": used,
        "layer_index": index,
        "layer_requested": int(layer),
        "n_layers": n_layers,
        "grid": grid,
        "mask": masks[box_mapping],
        "image_attention_share": total / float(row.sum()) if row.sum() > 0 else 0.0,
        "n_image_tokens": len(pos),
        "orig_size": list(orig.size),
        "input_size": list(size),
        "resized_size": list(resized),
        "grid_thw": thw,
    }


def _heatmap_ids(items: Sequence[Any], limit: int | None) -> set[str] | None:
    """Ids of at most ``limit`` items with a box, round-robin over dimensions (None: all)."""
    if limit is None:
        return None
    by_dim: dict[str, list[str]] = defaultdict(list)
    for idx, item in enumerate(items):
        if _get(item, "bbox") is not None and _get(item, "images"):
            by_dim[str(_get(item, "dimension", "") or "")].append(str(_get(item, "id", idx)))
    chosen: list[str] = []
    queues = [list(v) for _, v in sorted(by_dim.items())]
    while len(chosen) < limit and any(queues):
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return set(chosen)


def _get(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, dict):
        return item.get(name, default)
    return getattr(item, name, default)


def _means(rows: Sequence[Mapping[str, Any]], mapping: str | None = None) -> dict[str, Any]:
    """``{n, mean_coverage, mean_box_share}`` of ``rows`` (one mapping's columns, or the
    configured ``coverage``/``box_share`` when ``mapping`` is None)."""
    cov = "coverage" if mapping is None else f"coverage_{mapping}"
    share = "box_share" if mapping is None else f"box_share_{mapping}"

    def mean(vals: list[float]) -> float:
        return float(np.mean(vals)) if vals else math.nan

    return {"n": len(rows), "mean_coverage": mean([r[cov] for r in rows]),
            "mean_box_share": mean([r[share] for r in rows])}


def summarize_rows(rows: Sequence[Mapping[str, Any]], box_mapping: str) -> dict[str, Any]:
    """Means overall and per dimension, for the configured mapping (top level) and for both
    (``mappings``): what ``summary.json`` and the report show."""
    by_dim: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dim[str(r.get("dimension") or "")].append(r)
    return {
        **_means(rows),
        "box_mapping": box_mapping,
        "mappings": {m: _means(rows, m) for m in BOX_MAPPINGS},
        "per_dimension": {
            d: {**_means(rs), "mappings": {m: _means(rs, m) for m in BOX_MAPPINGS}}
            for d, rs in sorted(by_dim.items())
        },
    }


def coverage_for_benchmark(
    model_dir: str | Path | tuple[Any, Any],
    items: Iterable[Any],
    layer: int = DEFAULT_LAYER,
    out_jsonl: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    heatmap_dir: str | Path | None = None,
    heatmap_limit: int | None = None,
    device: str | None = None,
    box_mapping: str = "cells",
) -> dict[str, Any]:
    """Coverage for every item with a bbox; per-item rows go to ``out_jsonl`` (one JSON a line).

    ``items`` are :class:`r2i.evaluation.benchmarks.EvalItem`-like (``id``, ``images`` as encoded
    bytes, ``query``, ``bbox``, ``dimension``); items without a bbox or image are skipped and
    counted. ``model_dir`` may also be an already loaded ``(model, processor)`` pair. ``layer`` is
    1-based (see :func:`resolve_layer`). Heat maps are written to ``heatmap_dir`` as ``<id>.png``
    when given: for every item, or for at most ``heatmap_limit`` items taken one dimension at a
    time (so a few maps show every dimension). Returns the summary: ``n``, ``skipped``,
    ``mean_coverage``, ``mean_box_share`` (of ``box_mapping``), ``box_mapping``, ``mappings``
    (``{cells|area: {n, mean_coverage, mean_box_share}}``), ``per_dimension`` (the same per
    dimension), ``layer`` (1-based, used), ``layer_index`` (0-based) and ``n_layers``.
    """
    if isinstance(model_dir, tuple):
        model, processor = model_dir
    else:
        model, processor = load_model(model_dir, device=device)
    items = list(items)
    chosen = _heatmap_ids(items, heatmap_limit)
    rows: list[dict[str, Any]] = []
    skipped = 0
    fh = None
    if out_jsonl is not None:
        Path(out_jsonl).parent.mkdir(parents=True, exist_ok=True)
        fh = open(out_jsonl, "w", encoding="utf-8")  # noqa: SIM115
    if heatmap_dir is not None:
        Path(heatmap_dir).mkdir(parents=True, exist_ok=True)
    n_layers = num_text_layers(model)
    used_layer = resolve_layer(layer, n_layers)
    try:
        for idx, item in enumerate(items):
            images = _get(item, "images") or []
            bbox = _get(item, "bbox")
            if not images or bbox is None:
                skipped += 1
                continue
            item_id = str(_get(item, "id", idx))
            img = images[0]
            pil = img if isinstance(img, Image.Image) else decode_image(bytes(img), name=item_id)
            t0 = time.perf_counter()
            res = coverage_for_item(model, processor, pil, str(_get(item, "query", "")), bbox,
                                    layer=layer, max_pixels=max_pixels, box_mapping=box_mapping)
            row = {
                "id": item_id,
                "dimension": str(_get(item, "dimension", "") or ""),
                "bbox": [float(v) for v in bbox],
                "seconds": round(time.perf_counter() - t0, 3),
                **{k: v for k, v in res.items() if k not in ("grid", "mask")},
                "grid_hw": list(res["grid"].shape),
            }
            rows.append(row)
            if len(rows) % 10 == 0:
                log.info("attention: %d items done (last %.2f s/item)", len(rows), row["seconds"])
            if fh is not None:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
            if heatmap_dir is not None and (chosen is None or item_id in chosen):
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)
                heatmap_image(pil, res["grid"], bbox).save(Path(heatmap_dir) / f"{safe}.png")
    finally:
        if fh is not None:
            fh.close()
    return {"skipped": skipped, "layer": used_layer, "layer_index": used_layer - 1,
            "n_layers": n_layers, **summarize_rows(rows, box_mapping)}


class AttentionUnavailableError(RuntimeError):
    """torch/transformers are missing: attention coverage cannot run in this environment."""


def require_backend() -> None:
    """Fail with how to fix it when torch or transformers cannot be imported."""
    missing = []
    for mod in ("torch", "transformers"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise AttentionUnavailableError(
            f"attention coverage needs {' and '.join(missing)}: install the 'attention' extra "
            "(pip install -e '.[attention]', CPU torch==2.13.0) or use envs/evaluation.yaml; "
            "or set evaluation.attention.models: {} to skip it")


def run_attention(model_dir: str | Path, benchmark: str, benchmark_spec: dict[str, Any], *,
                  rows_out: str | Path, summary_out: str | Path, heatmap_dir: str | Path,
                  model_name: str = "", layer: int = DEFAULT_LAYER,
                  max_pixels: int = DEFAULT_MAX_PIXELS, heatmaps: int = 6,
                  device: str | None = None, box_mapping: str = "cells") -> dict[str, Any]:
    """The ``attention`` rule: coverage of one model directory on one benchmark.

    Writes per-item rows (JSONL), the summary (JSON: the :func:`coverage_for_benchmark` summary
    plus model, benchmark and timing) and up to ``heatmaps`` heat-map PNGs.
    """
    from r2i.evaluation.benchmarks import load_benchmark
    from r2i.io import write_json

    require_backend()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"attention: model directory {model_dir} has no config.json "
                                "(expected a Hugging Face Qwen2.5-VL / Qwen3-VL checkpoint)")
    items = load_benchmark(benchmark, benchmark_spec)
    t0 = time.perf_counter()
    tmp_rows = Path(f"{rows_out}.partial")
    summary = coverage_for_benchmark(model_dir, items, layer=layer, out_jsonl=tmp_rows,
                                     max_pixels=max_pixels, heatmap_dir=heatmap_dir,
                                     heatmap_limit=heatmaps, device=device,
                                     box_mapping=box_mapping)
    if summary["n"] == 0:
        raise ValueError(f"attention: benchmark '{benchmark}' has no item with a bbox and an "
                         f"image ({summary['skipped']} items skipped); coverage needs the box")
    tmp_rows.replace(rows_out)
    tiny = model_dir / "R2I_TINY_RANDOM_MODEL.json"
    summary = {"model": model_name or model_dir.name, "model_dir": str(model_dir),
               "benchmark": benchmark, "tiny_random_model": tiny.exists(),
               "layer_requested": layer, "max_pixels": max_pixels,
               "seconds": round(time.perf_counter() - t0, 2), **summary}
    write_json(summary_out, summary)
    mp = summary["mappings"]
    log.info("attention %s on %s: %d items, layer %s of %s (1-based); mean coverage: cells %.4f "
             "(uniform %.4f), area %.4f (uniform %.4f)", summary["model"], benchmark,
             summary["n"], summary["layer"], summary["n_layers"], mp["cells"]["mean_coverage"],
             mp["cells"]["mean_box_share"], mp["area"]["mean_coverage"],
             mp["area"]["mean_box_share"])
    return summary
