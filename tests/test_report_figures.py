"""Report figures fed by the evaluation's measurements (r2i.report.figures)."""

from __future__ import annotations

import json
from pathlib import Path

from r2i.report.figures import attention_figure, throughput_figure


def test_accuracy_vs_speed_uses_wall_clock_throughput_and_latency_at_concurrency_one(
        tmp_path: Path) -> None:
    view = {"accuracy": {"overall": {"n": 40, "correct": 20, "accuracy": 0.5}},
            "throughput": {"items": 40, "concurrency": 64, "wall_s": 8.0, "items_per_s": 5.0},
            "latency_c1": {"n": 8, "mean": 0.5, "samples_per_s": 2.0},
            "latency_s": {"mean": 3.0}}
    doc = {"model": "m", "benchmark": "b", "views": {"full": view, "tool": {
        **view, "throughput": {"items": 40, "concurrency": 64, "wall_s": 40.0, "items_per_s": None,
                               "note": "cached"}}}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))
    points = throughput_figure([path], tmp_path / "t.svg")
    by_view = {p["view"]: p for p in points}
    assert by_view["full"]["items_per_s"] == 5.0 and by_view["full"]["concurrency"] == 64
    assert by_view["full"]["samples_per_s_c1"] == 2.0
    assert by_view["tool"]["items_per_s"] is None and by_view["tool"]["samples_per_s_c1"] == 2.0
    svg = (tmp_path / "t.svg").read_text()
    assert "concurrency 1" in svg and "64 in flight" in svg


def test_attention_figure_shows_both_box_mappings(tmp_path: Path) -> None:
    rows = [{"coverage_cells": 0.3, "box_share_cells": 0.2, "coverage_area": 0.05,
             "box_share_area": 0.02, "coverage": 0.3, "box_share": 0.2, "dimension": "ocr"}]
    means = {"cells": {"n": 1, "mean_coverage": 0.3, "mean_box_share": 0.2},
             "area": {"n": 1, "mean_coverage": 0.05, "mean_box_share": 0.02}}
    summary = {"model": "m", "benchmark": "b", "layer": 24, "n_layers": 28, "n": 1,
               "box_mapping": "cells", "mappings": means,
               "per_dimension": {"ocr": {"n": 1, "mappings": means}}}
    (tmp_path / "s.json").write_text(json.dumps(summary))
    (tmp_path / "r.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert attention_figure([tmp_path / "s.json"], [tmp_path / "r.jsonl"], tmp_path / "a.svg") == 1
    svg = (tmp_path / "a.svg").read_text()
    assert "coverage (cells)" in svg and "uniform (area)" in svg and "layer 24 of 28, 1-based" in svg
