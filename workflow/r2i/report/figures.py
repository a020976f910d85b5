"""Report figures (SVG, matplotlib): the synthesis funnel, accuracy per dimension with the zooming
gap, accuracy against speed (wall-clock throughput and latency at concurrency 1), attention
coverage in both box mappings and cost per stage.

Each function reads the JSON files the pipeline wrote (never the model servers), draws one figure
and writes it atomically, so a report can be rebuilt from finished results alone. The Agg backend
is used: report jobs run on headless nodes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from r2i.io import atomic_write_bytes, read_json, read_jsonl

__all__ = [
    "accuracy_figure",
    "attention_figure",
    "cost_figure",
    "funnel_figure",
    "throughput_figure",
]

VIEW_COLORS = {"full": "#d62728", "crop": "#2ca02c", "tool": "#1f77b4"}
VIEW_LABELS = {"full": "full image", "crop": "crop", "tool": "zoom tool"}
KEPT_COLOR = "#2ca02c"
_REASON_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                  "#17becf", "#1f77b4", "#aec7e8", "#ffbb78", "#98df8a"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 10, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _save(fig: Any, out: str | Path) -> None:
    """Write ``fig`` as SVG (or PNG by suffix) atomically; metadata off so reruns are identical."""
    buf = io.BytesIO()
    fmt = Path(out).suffix.lstrip(".") or "svg"
    meta = {"Date": None} if fmt == "svg" else {}
    fig.savefig(buf, format=fmt, bbox_inches="tight", metadata=meta, dpi=110)
    _plt().close(fig)
    atomic_write_bytes(out, buf.getvalue())


def _empty(out: str | Path, title: str, message: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 1.6))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.4, message, ha="center", va="center", transform=ax.transAxes)
    _save(fig, out)


# --------------------------------------------------------------------------- synthesis


def funnel_figure(funnel_json: str | Path, out: str | Path) -> dict[str, Any]:
    """Items in and out of every filter (manifest, then each stage), drops split by reason.

    Returns the reason -> colour legend and the per-step counts (for the caption/tests).
    """
    funnel = read_json(funnel_json)
    steps: list[tuple[str, int, int, dict[str, int]]] = []
    m = funnel.get("manifest") or {}
    if m:
        steps.append(("manifest (images)", int(m.get("files", 0)), int(m.get("kept", 0)),
                      dict(m.get("by_reason") or {})))
    for s in funnel.get("stages", []):
        steps.append((s["stage"], int(s["rows"]), int(s["kept"]), dict(s.get("reasons") or {})))
    removed = int((funnel.get("contamination") or {}).get("removed", 0))
    splits = funnel.get("splits") or {}
    final = sum(int(v) for v in splits.values())
    steps.append(("dataset (after contamination check)", final + removed, final,
                  {"benchmark_contamination": removed} if removed else {}))
    reasons = sorted({r for *_, rs in steps for r in rs})
    colors = {r: _REASON_COLORS[i % len(_REASON_COLORS)] for i, r in enumerate(reasons)}

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(steps) + 1.6))
    labels = [name for name, *_ in steps]
    y = list(range(len(steps)))[::-1]
    for yi, (_, rows, kept, rs) in zip(y, steps, strict=True):
        ax.barh(yi, kept, color=KEPT_COLOR, height=0.6)
        left = kept
        for r in reasons:
            n = rs.get(r, 0)
            if n:
                ax.barh(yi, n, left=left, color=colors[r], height=0.6)
                left += n
        other = rows - left
        if other > 0:  # dropped without a recorded reason
            ax.barh(yi, other, left=left, color="#cccccc", height=0.6)
        ax.text(rows, yi, f"  {kept} / {rows}", va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.set_xlabel("items (kept in green; dropped, by reason, stacked to the right)")
    ax.set_title("Synthesis funnel: kept / in per filter")
    handles = [plt.Rectangle((0, 0), 1, 1, color=KEPT_COLOR)] + [
        plt.Rectangle((0, 0), 1, 1, color=colors[r]) for r in reasons]
    ax.legend(handles, ["kept", *[f"dropped: {r}" for r in reasons]], loc="center left",
              bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    ax.margins(x=0.15)
    _save(fig, out)
    return {"steps": [{"step": n, "in": i, "kept": k, "reasons": r} for n, i, k, r in steps],
            "colors": colors}


# --------------------------------------------------------------------------- evaluation


def _load_metrics(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    return [read_json(p) for p in paths]


def accuracy_figure(metrics_paths: Sequence[str | Path], out: str | Path) -> int:
    """Per model x benchmark: accuracy per dimension for each view (left) and the zooming gap
    crop - full with its bootstrap interval (right). Returns the number of panels drawn."""
    docs = _load_metrics(metrics_paths)
    if not docs:
        _empty(out, "Accuracy per dimension", "no evaluation configured (evaluation.models)")
        return 0
    plt = _plt()
    fig, axes = plt.subplots(len(docs), 2, figsize=(12, 3.8 * len(docs)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for row, doc in zip(axes, docs, strict=True):
        views = [v for v in ("full", "crop", "tool") if v in doc["views"]]
        dims = sorted({d for v in views for d in doc["views"][v]["accuracy"] if d != "overall"})
        dims.append("overall")
        width = 0.8 / max(1, len(views))
        ax = row[0]
        for k, v in enumerate(views):
            acc = doc["views"][v]["accuracy"]
            vals = [100 * acc.get(d, {}).get("accuracy", math.nan) for d in dims]
            xs = [i + (k - (len(views) - 1) / 2) * width for i in range(len(dims))]
            ax.bar(xs, vals, width=width, color=VIEW_COLORS[v], label=VIEW_LABELS[v])
        first = doc["views"][views[0]]["accuracy"]
        ax.set_xticks(range(len(dims)), [f"{d.replace('_', chr(10))}\nn={first.get(d, {}).get('n', 0)}"
                                          for d in dims], fontsize=8)
        ax.set_ylim(0, 119)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{doc['model']} on {doc['benchmark']}")
        ax.legend(fontsize=8, frameon=False, ncol=len(views), loc="upper left")
        ax2 = row[1]
        gap = doc.get("zooming_gap") or {}
        if gap:
            gd = [d for d in dims if d in gap]
            diffs = [100 * gap[d]["diff"] for d in gd]
            lo = [100 * (gap[d]["diff"] - gap[d]["ci_low"]) for d in gd]
            hi = [100 * (gap[d]["ci_high"] - gap[d]["diff"]) for d in gd]
            colors = ["#555555" if d == "overall" else "#9467bd" for d in gd]
            ax2.barh(range(len(gd)), diffs, xerr=[lo, hi], color=colors, capsize=3)
            ax2.set_yticks(range(len(gd)), gd, fontsize=8)
            ax2.invert_yaxis()
            ax2.axvline(0, color="black", lw=0.8)
            alpha = gap[gd[0]].get("alpha", 0.05) if gd else 0.05
            ax2.set_xlabel(f"crop - full (points), {100 * (1 - alpha):.0f}% bootstrap CI")
            ax2.set_title("zooming gap")
        else:
            ax2.axis("off")
            ax2.text(0.5, 0.5, "zooming gap needs the full and crop views", ha="center",
                     transform=ax2.transAxes)
    fig.tight_layout()
    _save(fig, out)
    return len(docs)


def throughput_figure(metrics_paths: Sequence[str | Path], out: str | Path) -> list[dict[str, Any]]:
    """Overall accuracy against speed for every model x benchmark x view (single-pass views
    against the zoom-tool agent), on two measures of items/s:

    * filled markers: wall-clock items/s of the whole view at the concurrency it ran at (stated
      in the label): a throughput;
    * hollow markers: 1 / mean per-item latency with one item in flight (the sequential latency
      probe): the paper's speed axis.

    A model's two points for a view are joined by a line. Views without a measurement (e.g. all
    calls answered from the cache) have no point of that kind."""
    docs = _load_metrics(metrics_paths)
    points: list[dict[str, Any]] = []
    for doc in docs:
        for v, vd in doc["views"].items():
            acc = vd["accuracy"].get("overall", {}).get("accuracy")
            if acc is None:
                continue
            thr = vd.get("throughput") or {}
            c1 = vd.get("latency_c1") or {}
            p = {"model": doc["model"], "benchmark": doc["benchmark"], "view": v,
                 "accuracy": float(acc), "items_per_s": thr.get("items_per_s"),
                 "concurrency": thr.get("concurrency"), "samples_per_s_c1": c1.get("samples_per_s"),
                 "latency_c1_s": c1.get("mean")}
            if p["items_per_s"] is not None or p["samples_per_s_c1"] is not None:
                points.append(p)
    if not points:
        _empty(out, "Accuracy vs speed", "no evaluation results with a speed measurement")
        return points
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for p in points:
        color = VIEW_COLORS.get(p["view"], "#333333")
        marker = "s" if p["view"] == "tool" else "o"
        y = 100 * p["accuracy"]
        xs = [x for x in (p["items_per_s"], p["samples_per_s_c1"]) if x]
        if len(xs) == 2:
            ax.plot(xs, [y, y], color=color, lw=1, alpha=0.6)
        if p["items_per_s"]:
            ax.scatter(p["items_per_s"], y, s=70, color=color, marker=marker)
        if p["samples_per_s_c1"]:
            ax.scatter(p["samples_per_s_c1"], y, s=70, facecolors="white", edgecolors=color,
                       linewidths=1.6, marker=marker)
        where = max(xs)
        conc = f", {p['concurrency']} in flight" if p["items_per_s"] and p["concurrency"] else ""
        ax.annotate(f"{p['model']}\n{VIEW_LABELS.get(p['view'], p['view'])}{conc}",
                    (where, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("items/s (log scale)")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Accuracy vs speed: single pass (circles) and zoom-tool agent (squares)")
    ax.legend(handles=[
        Line2D([], [], marker="o", ls="", color="#555555", label="wall-clock items/s at the run's concurrency"),
        Line2D([], [], marker="o", ls="", markerfacecolor="white", color="#555555",
               label="1 / latency per item at concurrency 1 (the paper's axis)"),
    ], fontsize=8, frameon=False, loc="lower right")
    ax.margins(x=0.3)
    _save(fig, out)
    return points


# --------------------------------------------------------------------------- attention


def attention_figure(summary_paths: Sequence[str | Path], rows_paths: Sequence[str | Path],
                     out: str | Path) -> int:
    """Per model x benchmark, in both box mappings: the per-item coverage against the coverage
    uniform attention would give (the mapping's box share), and the means per dimension.

    ``cells`` (the paper's reference convention: every token cell the box touches) and ``area``
    (cells weighted by covered area) are drawn side by side; under uniform attention ``area``
    equals the box's area share while ``cells`` is the share of touched cells (higher for small
    boxes), so each is compared with its own uniform baseline."""
    pairs = list(zip(summary_paths, rows_paths, strict=True))
    if not pairs:
        _empty(out, "Attention coverage", "no models configured (evaluation.attention.models)")
        return 0
    plt = _plt()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(12.5, 4.0 * len(pairs)), squeeze=False)
    colors = {"cells": "#1f77b4", "area": "#ff7f0e"}
    for row, (sp, rp) in zip(axes, pairs, strict=True):
        summary, rows = read_json(sp), read_jsonl(rp)
        tag = " (tiny random test double)" if summary.get("tiny_random_model") else ""
        mappings = summary.get("mappings") or {}
        ax = row[0]
        top = 1e-6
        for m in ("cells", "area"):
            if not rows or f"coverage_{m}" not in rows[0]:
                continue
            cov = [r[f"coverage_{m}"] for r in rows]
            share = [r[f"box_share_{m}"] for r in rows]
            top = max([top, *cov, *share])
            mean = mappings.get(m, {})
            ax.scatter(share, cov, s=16, color=colors[m], alpha=0.8,
                       label=f"{m}: mean {mean.get('mean_coverage', float('nan')):.4f} vs uniform "
                             f"{mean.get('mean_box_share', float('nan')):.4f}")
        ax.plot([0, top], [0, top], color="#888888", lw=0.8, ls="--", label="coverage = uniform")
        ax.set_xlabel("coverage of uniform attention (box share under the mapping)")
        ax.set_ylabel("attention coverage")
        ax.set_title(f"{summary['model']}{tag} on {summary['benchmark']}: per item "
                     f"(decoder layer {summary['layer']} of {summary['n_layers']}, 1-based)",
                     fontsize=9)
        ax.legend(fontsize=7.5, frameon=False)
        ax2 = row[1]
        per = summary.get("per_dimension") or {}
        dims = sorted(per)
        xs = list(range(len(dims)))
        bars = [("cells", "mean_coverage", colors["cells"], None, "coverage (cells)"),
                ("cells", "mean_box_share", "#aec7e8", None, "uniform (cells)"),
                ("area", "mean_coverage", colors["area"], None, "coverage (area)"),
                ("area", "mean_box_share", "#ffbb78", None, "uniform (area)")]
        for k, (m, key, color, _, label) in enumerate(bars):
            vals = [((per[d].get("mappings") or {}).get(m) or {}).get(key, float("nan")) for d in dims]
            ax2.bar([x - 0.3 + 0.2 * k for x in xs], vals, width=0.2, color=color, label=label)
        ax2.set_xticks(xs, [d.replace("_", "\n") for d in dims], fontsize=8)
        ax2.set_title(f"per dimension (n = {summary['n']}; reported mapping: "
                      f"{summary.get('box_mapping', 'cells')})", fontsize=9)
        ax2.legend(fontsize=7.5, frameon=False, ncol=4, loc="upper center",
                   bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    _save(fig, out)
    return len(pairs)


# --------------------------------------------------------------------------- cost


def cost_figure(cost: Mapping[str, Any], out: str | Path) -> None:
    """Model calls, tokens and model seconds per stage, and per kept training item."""
    stages = cost["stages"]
    if not stages:
        _empty(out, "Cost", "no synthesis stages ran")
        return
    plt = _plt()
    names = [s["stage"] for s in stages]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    series = [
        ("model calls", [s["calls"] for s in stages], "calls_per_kept_item"),
        ("tokens (prompt + completion)", [s["prompt_tokens"] + s["completion_tokens"]
                                          for s in stages], "tokens_per_kept_item"),
        ("model seconds (summed latency)", [s["model_seconds"] for s in stages],
         "model_seconds_per_kept_item"),
    ]
    per_item = cost["totals"]
    cached = [s.get("cache_hits", 0) for s in stages]
    for i, (ax, (title, vals, key)) in enumerate(zip(axes, series, strict=True)):
        ax.bar(range(len(names)), vals, color="#1f77b4", label="sent to a model")
        if i == 0 and any(cached):
            ax.bar(range(len(names)), cached, color="#aec7e8", hatch="//",
                   label="answered from the call cache")
            ax.legend(fontsize=7, frameon=False)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        v = per_item.get(key)
        sub = f"\n{v:,.1f} per kept item" if isinstance(v, (int, float)) else ""
        ax.set_title(f"{title}{sub}", fontsize=9)
    fig.suptitle(f"Synthesis cost: {per_item['kept_items']} kept items, "
                 f"{per_item['calls']:,} model calls, "
                 f"{per_item['prompt_tokens'] + per_item['completion_tokens']:,} tokens",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, out)
