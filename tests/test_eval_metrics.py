"""Metrics: accuracy tables, paired bootstrap intervals, the zooming gap, latency stats."""

from __future__ import annotations

import numpy as np
import pytest

from r2i.evaluation.metrics import (
    accuracy_table,
    build_metrics,
    latency_stats,
    paired_bootstrap_diff,
    zooming_gap,
)


def test_bootstrap_constant_difference_has_a_point_interval() -> None:
    a = [0, 1, 0, 1, 0]
    b = [1, 1, 1, 1, 1]  # paired differences 1, 0, 1, 0, 1 -> not constant
    res = paired_bootstrap_diff(a, b, n_boot=2000, seed=1)
    assert res["diff"] == pytest.approx(0.6)
    assert 0.0 <= res["ci_low"] <= 0.6 <= res["ci_high"] <= 1.0
    same = paired_bootstrap_diff([0.2] * 10, [0.7] * 10, n_boot=500)
    assert same["diff"] == pytest.approx(0.5)
    assert same["ci_low"] == pytest.approx(0.5) and same["ci_high"] == pytest.approx(0.5)


def test_bootstrap_matches_normal_theory_and_is_reproducible() -> None:
    rng = np.random.default_rng(7)
    n = 400
    a = (rng.random(n) < 0.4).astype(float)
    b = np.where(rng.random(n) < 0.5, 1.0, a)  # b >= a, correlated pairs
    d = b - a
    res = paired_bootstrap_diff(a, b, n_boot=20_000, seed=3)
    se = d.std(ddof=1) / np.sqrt(n)
    assert res["diff"] == pytest.approx(d.mean())
    assert res["ci_low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.2 * se + 0.005)
    assert res["ci_high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.2 * se + 0.005)
    assert paired_bootstrap_diff(a, b, n_boot=20_000, seed=3) == res
    # Pairing matters: the paired interval is narrower than an unpaired one would be.
    unpaired_se = np.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)
    assert res["ci_high"] - res["ci_low"] < 2 * 1.96 * unpaired_se


def test_bootstrap_edge_cases() -> None:
    assert paired_bootstrap_diff([], [])["diff"] is None
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 0], [1])


def _recs(correct: list[int], dims: list[str], lat: float = 0.1) -> list[dict]:
    return [{"id": f"i{k}", "dimension": d, "correct": bool(c), "latency_s": lat}
            for k, (c, d) in enumerate(zip(correct, dims, strict=True))]


def test_accuracy_and_gap_per_dimension() -> None:
    dims = ["ocr"] * 4 + ["color"] * 4
    full = _recs([0, 0, 1, 0, 1, 1, 0, 1], dims)
    crop = _recs([1, 1, 1, 1, 1, 1, 1, 1], dims)
    table = accuracy_table(full)
    assert table["ocr"] == {"n": 4, "correct": 1, "accuracy": 0.25}
    assert table["overall"]["accuracy"] == pytest.approx(0.5)
    gap = zooming_gap(full, crop[::-1], n_boot=1000)  # paired by id, not by position
    assert gap["ocr"]["diff"] == pytest.approx(0.75)
    assert gap["color"]["diff"] == pytest.approx(0.25)
    assert gap["overall"]["diff"] == pytest.approx(0.5)
    assert gap["overall"]["ci_low"] > 0


def test_build_metrics_with_tool_view() -> None:
    dims = ["ocr"] * 4
    full = _recs([0, 0, 0, 1], dims, lat=0.1)
    crop = _recs([1, 1, 1, 1], dims, lat=0.1)
    tool = [{**r, "tool_calls": 1 if k < 3 else 0, "turns": 2 if k < 3 else 1}
            for k, r in enumerate(_recs([1, 0, 1, 1], dims, lat=0.3))]
    doc = build_metrics({"full": full, "crop": crop, "tool": tool}, model="m", benchmark="b",
                        n_boot=500)
    assert doc["zooming_gap"]["overall"]["diff"] == pytest.approx(0.75)
    cmp = doc["tool_vs_single_pass"]
    assert cmp["tool_minus_full"]["diff"] == pytest.approx(0.5)
    assert cmp["gap_closed_fraction"] == pytest.approx(0.5 / 0.75)
    assert cmp["latency_ratio_tool_over_full"] == pytest.approx(3.0)
    assert doc["views"]["tool"]["tool_calls_per_item"]["mean"] == pytest.approx(0.75)


def test_latency_stats() -> None:
    s = latency_stats([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "min": 1.0, "max": 3.0, "std": pytest.approx(np.std([1, 2, 3]))}
    assert latency_stats([])["mean"] is None
