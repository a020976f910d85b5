"""Evaluation metrics: accuracy per dimension, the zooming gap with paired bootstrap confidence
intervals, latency statistics, and the metrics document of one model x benchmark.

Inputs are the per-item records of :mod:`r2i.evaluation.infer` (dicts with at least ``id``,
``dimension``, ``correct``, ``latency_s``; tool records add ``tool_calls``; a record with
``skipped`` set, e.g. a crop-view item without a crop image, has no verdict and is only counted)
and each view's run facts (:func:`r2i.evaluation.evaluate_view`: wall-clock throughput at the
stated concurrency, per-item latency at concurrency 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy_table",
    "build_metrics",
    "latency_stats",
    "paired_bootstrap_diff",
    "zooming_gap",
]

OVERALL = "overall"


def _acc(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def accuracy_table(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{dimension: {n, correct, accuracy}}`` plus ``overall`` (accuracy in [0, 1])."""
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(str(r.get("dimension") or "unknown"), []).append(bool(r["correct"]))
    out = {d: {"n": len(v), "correct": int(sum(v)), "accuracy": _acc(v)}
           for d, v in sorted(groups.items())}
    allv = [bool(r["correct"]) for r in records]
    out[OVERALL] = {"n": len(allv), "correct": int(sum(allv)), "accuracy": _acc(allv)}
    return out


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000,
                          seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Mean of ``b - a`` over paired items with a percentile bootstrap ``1 - alpha`` interval.

    Items (pairs) are resampled with replacement ``n_boot`` times with a fixed seed, so the
    interval is reproducible. Returns ``{n, diff, ci_low, ci_high, n_boot, alpha}``; with no
    items every number is None.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    n = int(x.size)
    if n == 0:
        return {"n": 0, "diff": None, "ci_low": None, "ci_high": None, "n_boot": n_boot,
                "alpha": alpha}
    d = y - x
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bound memory: chunk x n indices at a time
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start:start + k] = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"n": n, "diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "n_boot": n_boot, "alpha": alpha}


def _paired(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
            ) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    bi = {r["id"]: r for r in b}
    return [(r, bi[r["id"]]) for r in a if r["id"] in bi]


def zooming_gap(full: Sequence[Mapping[str, Any]], crop: Sequence[Mapping[str, Any]], *,
                n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Crop minus full accuracy (in [0, 1] units) per dimension and overall, paired by item id,
    each with a paired bootstrap interval (:func:`paired_bootstrap_diff`)."""
    pairs = _paired(full, crop)
    dims: dict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = {}
    for f, c in pairs:
        dims.setdefault(str(f.get("dimension") or "unknown"), []).append((f, c))
    out: dict[str, Any] = {}
    for dim, ps in [*sorted(dims.items()), (OVERALL, pairs)]:
        out[dim] = paired_bootstrap_diff([float(f["correct"]) for f, _ in ps],
                                         [float(c["correct"]) for _, c in ps],
                                         n_boot=n_boot, seed=seed, alpha=alpha)
    return out


def latency_stats(values: Sequence[float]) -> dict[str, float | None]:
    """``{mean, min, max, std}`` (population std) of per-item latencies in seconds."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "min": None, "max": None, "std": None}
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "std": float(v.std())}


#: answer sources that are fallbacks (r2i.parsing.extract_answer): not a complete <answer> tag
FALLBACK_ANSWER_SOURCES = ("unclosed_tag", "answer_line", "last_lines")
#: verdict sources that come from an LLM judge call (or its documented fallback)
JUDGE_SOURCES = ("judge", "judge_unparsed", "judge_unavailable")


def _view_summary(all_records: Sequence[Mapping[str, Any]],
                  run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    records = [r for r in all_records if not r.get("skipped")]
    skipped = _counts(str(r["skipped"]) for r in all_records if r.get("skipped"))
    lat = [float(r.get("latency_s", 0.0)) for r in records]
    run = dict(run or {})
    fallback = [r for r in records if r.get("answer_source") in FALLBACK_ANSWER_SOURCES]
    sources = _counts(str(r.get("verdict_source", "")) for r in records)
    out: dict[str, Any] = {
        "accuracy": accuracy_table(records),
        "skipped": {"total": sum(skipped.values()), "by_reason": skipped},
        # per-request latency as recorded (at the run's concurrency; cached calls: as first sent)
        "latency_s": latency_stats(lat),
        # wall-clock items/s of the whole view at the stated concurrency (None if not measured)
        "throughput": {k: run.get(k) for k in ("items", "concurrency", "wall_s", "items_per_s",
                                               "cached_items", "note")} if run else None,
        # per-item latency with one item in flight: the paper's speed axis (samples/s = 1/mean)
        "latency_c1": run.get("latency_c1"),
        "tokens": {
            "prompt": int(sum(int(r.get("prompt_tokens", 0)) for r in records)),
            "completion": int(sum(int(r.get("completion_tokens", 0)) for r in records)),
        },
        "verdict_sources": sources,
        "answer_sources": _counts(str(r.get("answer_source")) for r in records
                                  if r.get("answer_source")),
        "fallback_verdicts": {"n": len(fallback),
                              "correct": sum(1 for r in fallback if r.get("correct"))},
        "judge": {"calls": sum(sources.get(k, 0) for k in JUDGE_SOURCES),
                  "unparsed": sources.get("judge_unparsed", 0),
                  "unavailable": sources.get("judge_unavailable", 0)},
        "model_errors": sum(1 for r in records if r.get("error")),
    }
    if any("tool_calls" in r for r in records):
        calls = [float(r.get("tool_calls", 0)) for r in records]
        out["tool_calls_per_item"] = {**latency_stats(calls),
                                      "total": int(sum(calls)),
                                      "items_with_calls": sum(1 for c in calls if c > 0)}
        out["turns_per_item"] = latency_stats([float(r.get("turns", 1)) for r in records])
    return out


def _counts(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def build_metrics(views: Mapping[str, Sequence[Mapping[str, Any]]], *, model: str,
                  benchmark: str, n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05,
                  extra: Mapping[str, Any] | None = None,
                  runs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The metrics document of one model x benchmark from the per-item records of each view.

    Always: per-view accuracy (per dimension and overall), latency and token statistics. With
    ``full`` and ``crop``: the zooming gap (crop - full) with paired bootstrap intervals. With
    ``full`` and ``tool``: the tool baseline's gain over single-pass full-view and the share of
    the zooming gap it closes, plus the latency ratio (tool / full).
    """
    runs = runs or {}
    doc: dict[str, Any] = {"model": model, "benchmark": benchmark,
                           "views": {v: _view_summary(r, runs.get(v)) for v, r in views.items()},
                           "bootstrap": {"n_boot": n_boot, "seed": seed, "alpha": alpha,
                                         "method": "paired percentile bootstrap over items"}}
    def judged(records: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]] | None:
        return None if records is None else [r for r in records if not r.get("skipped")]

    full, crop, tool = judged(views.get("full")), judged(views.get("crop")), judged(views.get("tool"))
    if full is not None and crop is not None:
        doc["zooming_gap"] = zooming_gap(full, crop, n_boot=n_boot, seed=seed, alpha=alpha)
    if full is not None and tool is not None:
        pairs = _paired(full, tool)
        gain = paired_bootstrap_diff([float(f["correct"]) for f, _ in pairs],
                                     [float(t["correct"]) for _, t in pairs],
                                     n_boot=n_boot, seed=seed, alpha=alpha)
        c1_full = (runs.get("full") or {}).get("latency_c1") or {}
        c1_tool = (runs.get("tool") or {}).get("latency_c1") or {}
        if c1_full.get("mean") and c1_tool.get("mean"):  # concurrency 1: the paper's speed axis
            lat_full, lat_tool, basis = c1_full["mean"], c1_tool["mean"], "latency at concurrency 1"
        else:
            lat_full = latency_stats([float(f.get("latency_s", 0.0)) for f, _ in pairs])["mean"]
            lat_tool = latency_stats([float(t.get("latency_s", 0.0)) for _, t in pairs])["mean"]
            basis = "recorded request latency at the run's concurrency"
        cmp: dict[str, Any] = {"tool_minus_full": gain,
                               "latency_ratio_tool_over_full":
                                   (lat_tool / lat_full) if lat_full and lat_tool is not None
                                   else None,
                               "latency_ratio_basis": basis}
        gap = doc.get("zooming_gap", {}).get(OVERALL, {}).get("diff")
        cmp["gap_closed_fraction"] = (gain["diff"] / gap) if gap and gain["diff"] is not None \
            else None
        doc["tool_vs_single_pass"] = cmp
    if extra:
        doc.update(extra)
    return doc
