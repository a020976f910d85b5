"""A gallery of kept and dropped synthesis examples: one self-contained HTML page.

Each card shows the full image with the red box (for a kept item: exactly the image the student
is trained on, the ``mcq`` stage's blob), the crop the teachers saw, the question, the options
with the answer, the teachers' votes and the student's pass samples; a dropped card names the
stage and the reason. Images are embedded as downscaled JPEG data URLs, so the page works inside
``snakemake --report`` and when opened on its own.

Examples are picked deterministically (sorted ids, one dimension / reason at a time), so the
gallery of a rerun is identical.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from r2i.images import decode_image, draw_red_box, expand_box, load_image
from r2i.io import atomic_write_text
from r2i.synthesis.dataset import classify_dimension
from r2i.synthesis.records import Row, read_rows

from .facts import html_page

__all__ = ["build_gallery", "load_stage_tables", "pick_examples"]

log = logging.getLogger(__name__)

STAGES = ["objects", "crops", "questions", "answers", "mcq", "difficulty"]
FULL_BOX = (560, 420)  # thumbnail bounds of the full image (w, h)
CONTEXT_SIDE = 260  # the red box in context, cut from the same image
CROP_SIDE = 220

_CSS = """
.cards { display: flex; flex-direction: column; gap: 14px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 10px; display: flex; gap: 12px;
        flex-wrap: wrap; }
.card.kept { border-left: 6px solid #2ca02c; } .card.dropped { border-left: 6px solid #d62728; }
.card img { border: 1px solid #999; display: block; }
figure { margin: 0; }
.meta { flex: 1; min-width: 260px; }
.tag { display: inline-block; padding: 1px 6px; border-radius: 4px; color: white; font-size: 12px; }
.tag.kept { background: #2ca02c; } .tag.dropped { background: #d62728; }
.opt.right { font-weight: bold; color: #2ca02c; }
small { color: #666; }
"""


def load_stage_tables(shard_dirs: Sequence[str | Path]) -> dict[str, dict[str, Row]]:
    """stage -> item_id -> row, over all shards (a missing stage file is skipped)."""
    tables: dict[str, dict[str, Row]] = {s: {} for s in STAGES}
    for d in shard_dirs:
        for s in STAGES:
            p = Path(d) / f"{s}.parquet"
            if p.exists():
                tables[s].update({r.item_id: r for r in read_rows(p)})
    return tables


def _dim(rec: Mapping[str, Any]) -> str:
    q = rec.get("question")
    return classify_dimension(q) if q else "-"


def pick_examples(tables: Mapping[str, Mapping[str, Row]], n_kept: int, n_dropped: int
                  ) -> tuple[list[Row], list[tuple[str, Row]]]:
    """Kept items of the last stage, round-robin over dimensions; dropped items, round-robin
    over (stage, reason) so every filter that fired is shown once before any is shown twice."""
    last = next((s for s in reversed(STAGES) if tables.get(s)), None)
    kept_by_dim: dict[str, list[Row]] = defaultdict(list)
    if last:
        for r in sorted(tables[last].values(), key=lambda r: r.item_id):
            if r.kept:
                kept_by_dim[_dim(r.record)].append(r)
    kept = _round_robin([kept_by_dim[k] for k in sorted(kept_by_dim)], n_kept)
    dropped_by: dict[tuple[str, str], list[tuple[str, Row]]] = defaultdict(list)
    for s in STAGES:
        for r in sorted(tables.get(s, {}).values(), key=lambda r: r.item_id):
            if not r.kept:
                dropped_by[(s, r.reason or "unknown")].append((s, r))
    order = sorted(dropped_by, key=lambda k: (STAGES.index(k[0]), k[1]))
    dropped = _round_robin([dropped_by[k] for k in order], n_dropped)
    return kept, dropped


def _round_robin(queues: list[list[Any]], limit: int) -> list[Any]:
    queues = [list(q) for q in queues]
    out: list[Any] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def _data_url(img: Image.Image, max_w: int, max_h: int | None = None) -> str:
    im = img.convert("RGB")
    im.thumbnail((max_w, max_h or max_w * 4), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(img: Image.Image | None, max_w: int, alt: str, max_h: int | None = None) -> str:
    if img is None:
        return f"<div><small>({html.escape(alt)}: not available)</small></div>"
    return f"<img src='{_data_url(img, max_w, max_h)}' alt='{html.escape(alt)}' title='{html.escape(alt)}'>"


def _full_image(row: Row, rec: Mapping[str, Any], name: str) -> Image.Image | None:
    """The boxed full image: the stored training image, else the pool image with the box drawn."""
    if row.blob and rec.get("box_expanded") is not None:
        try:
            return decode_image(row.blob, name=name)
        except Exception as exc:  # fall back to drawing the box ourselves
            log.warning("gallery: %s: stored image unreadable (%s); drawing the box", name, exc)
    path, box = rec.get("image_path"), rec.get("box_expanded") or rec.get("box")
    if not path:
        return None
    try:
        img = load_image(path)
    except Exception as exc:  # a moved or corrupt pool image: the card says "not available"
        log.warning("gallery: %s: cannot read %s (%s)", name, path, exc)
        return None
    if box is not None:
        try:
            w = max(4, round(max(img.size) / 300))
            if not rec.get("box_expanded"):
                box = expand_box(box, 0.05, img.width, img.height)
            img = draw_red_box(img, box, width=w)
        except ValueError:
            pass
    return img


def _context(full: Image.Image | None, rec: Mapping[str, Any]) -> Image.Image | None:
    """The region around the red box (about 4x the box's side, at least 160 px) cut from the
    boxed image, so the box is visible where the downscaled full image shrinks it to a dot."""
    box = rec.get("box_expanded") or rec.get("box")
    if full is None or box is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(160.0, 4 * max(x1 - x0, y1 - y0))
    left = min(max(0.0, cx - side / 2), max(0.0, full.width - side))
    top = min(max(0.0, cy - side / 2), max(0.0, full.height - side))
    return full.crop((int(left), int(top), int(min(full.width, left + side)),
                      int(min(full.height, top + side))))


def _crop(tables: Mapping[str, Mapping[str, Row]], rec: Mapping[str, Any], name: str
          ) -> Image.Image | None:
    crop_row = tables.get("crops", {}).get(str(rec.get("object_id", "")))
    if crop_row is None or not crop_row.blob:
        return None
    try:
        return decode_image(crop_row.blob, name=name)
    except Exception as exc:
        log.warning("gallery: %s: crop unreadable (%s)", name, exc)
        return None


def _votes(rec: Mapping[str, Any]) -> str:
    votes = rec.get("votes") or []
    if not votes:
        return ""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for v in votes:
        counts[str(v.get("model", "?"))][str(v.get("answer"))] += 1
    parts = []
    for model, answers in sorted(counts.items()):
        inner = ", ".join(f"{html.escape(a)} &times;{n}" for a, n in sorted(answers.items()))
        parts.append(f"<b>{html.escape(model)}</b>: {inner}")
    agreement = rec.get("agreement")
    agr = f" (agreement {agreement:.2f})" if isinstance(agreement, (int, float)) else ""
    return f"<p>Teacher votes{agr}: " + "; ".join(parts) + "</p>"


def _card(tables: Mapping[str, Mapping[str, Row]], row: Row, stage: str | None) -> str:
    rec = row.record
    kept = stage is None
    status = ("<span class='tag kept'>kept</span>" if kept else
              f"<span class='tag dropped'>dropped at {html.escape(stage or '')}: "
              f"{html.escape(row.reason or 'unknown')}</span>")
    full = _full_image(row, rec, row.item_id)
    context = _context(full, rec)
    crop = _crop(tables, rec, row.item_id)
    lines = [status, f" <small>{html.escape(row.item_id)}</small>"]
    if rec.get("phrase"):
        lines.append(f"<p>Object: {html.escape(str(rec['phrase']))}</p>")
    if rec.get("question"):
        lines.append(f"<p><b>Q ({html.escape(_dim(rec))}):</b> {html.escape(str(rec['question']))}</p>")
    opts = rec.get("options") or []
    if opts:
        letter = str(rec.get("answer_letter") or "")
        items = []
        for k, o in enumerate(opts):
            lab = chr(ord("A") + k)
            cls = "opt right" if lab == letter else "opt"
            items.append(f"<li class='{cls}'>{lab}. {html.escape(str(o))}</li>")
        lines.append("<ol style='list-style:none;padding-left:0'>" + "".join(items) + "</ol>")
    elif rec.get("ground_truth") is not None:
        lines.append(f"<p>Consensus answer: <b>{html.escape(str(rec['ground_truth']))}</b></p>")
    lines.append(_votes(rec))
    samples = rec.get("student_samples") or []
    if samples:
        ok = sum(1 for s in samples if s.get("correct"))
        lines.append(f"<p>Student pass: {ok}/{len(samples)} samples correct "
                     f"({html.escape(str(rec.get('student_model', '')))})</p>")
    if rec.get("validation_reason") and not kept:
        lines.append(f"<p><small>validator: {html.escape(str(rec['validation_reason']))}</small></p>")
    return (f"<div class='card {'kept' if kept else 'dropped'}'>"
            f"<figure>{_img_tag(full, FULL_BOX[0], 'full image with the red box', FULL_BOX[1])}"
            f"<figcaption><small>full image (downscaled)</small></figcaption></figure>"
            f"<figure>{_img_tag(context, CONTEXT_SIDE, 'the red box in context', CONTEXT_SIDE)}"
            f"<figcaption><small>red box, same image</small></figcaption></figure>"
            f"<figure>{_img_tag(crop, CROP_SIDE, 'crop shown to the teachers', CROP_SIDE)}"
            f"<figcaption><small>teachers' crop</small></figcaption></figure>"
            f"<div class='meta'>{''.join(lines)}</div></div>")


def build_gallery(shard_dirs: Sequence[str | Path], out: str | Path, *, n_kept: int = 6,
                  n_dropped: int = 8) -> dict[str, int]:
    """Write the gallery page; returns how many kept and dropped cards it holds."""
    tables = load_stage_tables(shard_dirs)
    kept, dropped = pick_examples(tables, n_kept, n_dropped)
    body = [f"<style>{_CSS}</style>",
            "<p>Kept items are the training data (image with the red box as the student sees "
            "it); dropped items show the filter that removed them. Picked deterministically "
            "across dimensions and drop reasons.</p>",
            f"<h3>Kept ({len(kept)})</h3><div class='cards'>",
            *[_card(tables, r, None) for r in kept], "</div>",
            f"<h3>Dropped ({len(dropped)})</h3><div class='cards'>",
            *[_card(tables, r, s) for s, r in dropped], "</div>"]
    atomic_write_text(out, html_page("Synthesis examples: kept and dropped", "\n".join(body)))
    return {"kept": len(kept), "dropped": len(dropped)}
