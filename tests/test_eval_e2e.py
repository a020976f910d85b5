"""End to end: toy benchmark -> launched simulator (sim-student, sim-judge) -> records -> metrics.

The simulated student is resolution-limited (a test double), so the crop view must beat the full
view (a positive zooming gap) and the zoom-tool agent must close part of the gap at a higher
latency per item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from r2i.evaluation import (
    EvalSettings,
    ZoomSettings,
    evaluate_view,
    write_metrics,
)
from r2i.io import read_jsonl
from r2i.toy.world import generate_world, size_params

from .conftest import BIN, REPO


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_world")
    generate_world(root, seed=0, **size_params("tiny"))
    return root


@pytest.fixture(scope="session")
def eval_run(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("eval_out")
    endpoints = {"sim": {"launch": f"{BIN / 'r2i-sim-server'} --host 127.0.0.1 --port {{port}} "
                                   f"--world {tiny_world} --latency 0.02 --seed 0",
                         "max_concurrency": 16, "timeout_s": 60, "max_retries": 2,
                         "startup_timeout_s": 60}}
    bench = {"format": "zoombench",
             "path": str(tiny_world / "benchmark" / "zoombench_toy.parquet")}
    settings = EvalSettings(
        system_prompt=(REPO / "config/prompts/eval_system.txt").read_text(),
        tool_system_prompt=(REPO / "config/prompts/zoom_tool_system.txt").read_text(),
        tool=ZoomSettings(max_turns=4), concurrency=16)
    common = {"model": {"endpoint": "sim", "model": "sim-student"}, "endpoints": endpoints,
              "settings": settings, "cache_dir": out / "cache",
              "judge": {"endpoint": "sim", "model": "sim-judge"}}
    files = {}
    for view in ("full", "crop", "tool"):
        files[view] = out / f"{view}.jsonl"
        evaluate_view("toy_zoombench", bench, view, out=files[view], **common)
    doc = write_metrics(files, model="sim-student", benchmark="toy_zoombench",
                        metrics_out=out / "metrics.json", items_out=out / "items.jsonl",
                        n_boot=2000)
    return {"out": out, "doc": doc, "files": files, "common": common, "bench": bench}


def test_crop_beats_full_zooming_gap(eval_run: dict[str, Any]) -> None:
    doc = json.loads((eval_run["out"] / "metrics.json").read_text())
    full = doc["views"]["full"]["accuracy"]["overall"]["accuracy"]
    crop = doc["views"]["crop"]["accuracy"]["overall"]["accuracy"]
    gap = doc["zooming_gap"]["overall"]
    assert crop > full and gap["diff"] == pytest.approx(crop - full)
    assert gap["ci_low"] <= gap["diff"] <= gap["ci_high"] and gap["ci_high"] > 0
    dims = set(doc["views"]["full"]["accuracy"]) - {"overall"}
    assert dims and dims <= set(doc["zooming_gap"])
    for view in ("full", "crop"):
        v = doc["views"][view]
        assert v["latency_s"]["mean"] > 0 and v["tokens"]["completion"] > 0
        assert v["model_errors"] == 0


def test_tool_baseline_closes_part_of_gap_at_higher_latency(eval_run: dict[str, Any]) -> None:
    doc = eval_run["doc"]
    tool = doc["views"]["tool"]
    full = doc["views"]["full"]
    assert tool["tool_calls_per_item"]["total"] > 0
    assert tool["accuracy"]["overall"]["accuracy"] > full["accuracy"]["overall"]["accuracy"]
    assert tool["latency_s"]["mean"] > full["latency_s"]["mean"]
    assert doc["tool_vs_single_pass"]["gap_closed_fraction"] > 0
    recs = read_jsonl(eval_run["files"]["tool"])
    zoomed = [r for r in recs if r["tool_calls"]]
    assert zoomed and all(r["turns"] == r["tool_calls"] + 1 for r in zoomed)


def test_records_have_verdicts_and_items_file(eval_run: dict[str, Any]) -> None:
    recs = read_jsonl(eval_run["files"]["full"])
    assert all(r["answer"] is not None and r["verdict_source"] for r in recs)
    assert {"exact", "mcq_letter"} & {r["verdict_source"] for r in recs}
    items = read_jsonl(eval_run["out"] / "items.jsonl")
    assert len(items) == len(recs) and {"full", "crop", "tool"} <= set(items[0])


def test_rerun_is_answered_from_the_cache(eval_run: dict[str, Any]) -> None:
    again = eval_run["out"] / "full_again.jsonl"
    recs = evaluate_view("toy_zoombench", eval_run["bench"], "full", out=again,
                         **eval_run["common"])
    first = read_jsonl(eval_run["files"]["full"])
    assert all(r["cached"] for r in recs)
    assert [r["response"] for r in recs] == [r["response"] for r in first]


def test_prompt_transport_against_the_simulator(eval_run: dict[str, Any], tiny_world: Path) -> None:
    from dataclasses import replace

    common = dict(eval_run["common"])
    common["settings"] = replace(common["settings"], tool=ZoomSettings(transport="prompt"))
    recs = evaluate_view("toy_zoombench", eval_run["bench"], "tool",
                         out=eval_run["out"] / "tool_prompt.jsonl", **common)
    assert sum(r["tool_calls"] for r in recs) > 0
    full = read_jsonl(eval_run["files"]["full"])
    assert sum(r["correct"] for r in recs) > sum(r["correct"] for r in full)
