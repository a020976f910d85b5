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
from r2i.packagedata import prompt_path
from r2i.toy.world import generate_world, size_params

from .conftest import BIN


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
        system_prompt=prompt_path("eval_system").read_text(),
        tool_system_prompt=prompt_path("zoom_tool_system").read_text(),
        tool=ZoomSettings(), concurrency=16, probe_items=3)
    common = {"model": {"endpoint": "sim", "model": "sim-student"}, "endpoints": endpoints,
              "settings": settings, "cache_dir": out / "cache",
              "judge": {"endpoint": "sim", "model": "sim-judge"}}
    files, runs = {}, {}
    for view in ("full", "crop", "tool"):
        files[view] = out / f"{view}.jsonl"
        runs[view] = out / f"{view}.run.json"
        evaluate_view("toy_zoombench", bench, view, out=files[view], run_out=runs[view], **common)
    doc = write_metrics(files, model="sim-student", benchmark="toy_zoombench",
                        metrics_out=out / "metrics.json", items_out=out / "items.jsonl",
                        n_boot=2000, run_files=runs)
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
    """The simulated student drives the default (Qwen-Agent image_zoom_in_tool) format."""
    doc = eval_run["doc"]
    tool = doc["views"]["tool"]
    full = doc["views"]["full"]
    assert tool["tool_calls_per_item"]["total"] > 0
    assert tool["accuracy"]["overall"]["accuracy"] > full["accuracy"]["overall"]["accuracy"]
    assert tool["latency_c1"]["mean"] > full["latency_c1"]["mean"]
    assert doc["tool_vs_single_pass"]["latency_ratio_basis"] == "latency at concurrency 1"
    assert doc["tool_vs_single_pass"]["gap_closed_fraction"] > 0
    recs = read_jsonl(eval_run["files"]["tool"])
    zoomed = [r for r in recs if r["tool_calls"]]
    assert zoomed and all(r["turns"] == r["tool_calls"] + 1 for r in zoomed)
    assert all(b["img_idx"] == 0 and len(b["bbox_2d"]) == 4 for r in zoomed for b in r["boxes"])


def test_throughput_is_wall_clock_and_latency_is_at_concurrency_one(
        eval_run: dict[str, Any]) -> None:
    """items/s = items / wall time of the view at the stated concurrency (not items / summed
    latency), and a sequential probe gives the per-item latency at concurrency 1."""
    for view, v in eval_run["doc"]["views"].items():
        thr = v["throughput"]
        n = v["accuracy"]["overall"]["n"]
        assert thr["concurrency"] == 16 and thr["items"] == n and thr["cached_items"] == 0, view
        assert thr["items_per_s"] == pytest.approx(n / thr["wall_s"], rel=1e-3)
        summed = n / sum(r["latency_s"] for r in read_jsonl(eval_run["files"][view]))
        assert thr["items_per_s"] > summed, view  # 16 in flight: faster than one stream
        c1 = v["latency_c1"]
        assert c1["concurrency"] == 1 and c1["n"] == 3 and c1["errors"] == 0
        assert c1["cached_items"] == 0 and c1["samples_per_s"] == pytest.approx(1 / c1["mean"])
        assert "samples_per_s" not in v


def test_records_have_verdicts_and_items_file(eval_run: dict[str, Any]) -> None:
    recs = read_jsonl(eval_run["files"]["full"])
    assert all(r["answer"] is not None and r["verdict_source"] for r in recs)
    assert {"exact", "mcq_letter"} & {r["verdict_source"] for r in recs}
    items = read_jsonl(eval_run["out"] / "items.jsonl")
    assert len(items) == len(recs) and {"full", "crop", "tool"} <= set(items[0])


def test_rerun_is_answered_from_the_cache(eval_run: dict[str, Any]) -> None:
    from dataclasses import replace

    again = eval_run["out"] / "full_again.jsonl"
    common = dict(eval_run["common"])
    common["settings"] = replace(common["settings"], probe_items=0)
    recs = evaluate_view("toy_zoombench", eval_run["bench"], "full", out=again,
                         run_out=eval_run["out"] / "full_again.run.json", **common)
    first = read_jsonl(eval_run["files"]["full"])
    assert all(r["cached"] for r in recs)
    assert [r["response"] for r in recs] == [r["response"] for r in first]
    run = json.loads((eval_run["out"] / "full_again.run.json").read_text())
    assert run["items_per_s"] is None and "call cache" in run["note"]  # not a measurement


def test_rerun_resends_nothing_the_probe_finished(eval_run: dict[str, Any]) -> None:
    """The probe's calls are cached like any other: a rerun (e.g. after a kill) re-sends none of
    them and reports the latency recorded when they were sent one at a time."""
    first = json.loads((eval_run["out"] / "full.run.json").read_text())["latency_c1"]
    again = eval_run["out"] / "full_probe_again.jsonl"
    evaluate_view("toy_zoombench", eval_run["bench"], "full", out=again,
                  run_out=eval_run["out"] / "full_probe_again.run.json", **eval_run["common"])
    c1 = json.loads((eval_run["out"] / "full_probe_again.run.json").read_text())["latency_c1"]
    assert c1["cached_items"] == c1["n"] == first["n"] and c1["ids"] == first["ids"]
    assert c1["mean"] == pytest.approx(first["mean"], rel=0.5)


@pytest.mark.parametrize(("variant", "transport"), [("pixel", "tools"), ("pixel", "prompt"),
                                                    ("qwen_agent", "tools")])
def test_other_tool_variants_against_the_simulator(eval_run: dict[str, Any], variant: str,
                                                   transport: str) -> None:
    from dataclasses import replace

    common = dict(eval_run["common"])
    prompt = "zoom_tool_pixel_system" if variant == "pixel" else "zoom_tool_system"
    common["settings"] = replace(common["settings"], probe_items=0,
                                 tool_system_prompt=prompt_path(prompt).read_text(),
                                 tool=ZoomSettings(variant=variant, transport=transport))
    recs = evaluate_view("toy_zoombench", eval_run["bench"], "tool",
                         out=eval_run["out"] / f"tool_{variant}_{transport}.jsonl", **common)
    assert sum(r["tool_calls"] for r in recs) > 0
    full = read_jsonl(eval_run["files"]["full"])
    assert sum(r["correct"] for r in recs) > sum(r["correct"] for r in full)


def test_crop_view_skips_items_without_a_crop(eval_run: dict[str, Any], tmp_path: Path) -> None:
    """Rows without a crop image are skipped in the crop view (counted with a reason in
    metrics.json); the other views and the zooming gap use the remaining pairs."""
    import pandas as pd

    df = pd.read_parquet(eval_run["bench"]["path"])
    df.loc[[0, 2], "crop_image"] = None
    path = tmp_path / "no_crops.parquet"
    df.to_parquet(path)
    bench = {"format": "zoombench", "path": str(path)}
    common = dict(eval_run["common"])
    from dataclasses import replace

    common["settings"] = replace(common["settings"], probe_items=0)
    files = {v: tmp_path / f"{v}.jsonl" for v in ("full", "crop")}
    runs = {v: tmp_path / f"{v}.run.json" for v in ("full", "crop")}
    for v in files:
        evaluate_view("nocrop", bench, v, out=files[v], run_out=runs[v], **common)
    crop = read_jsonl(files["crop"])
    assert len(crop) == len(df) and [r["skipped"] for r in crop if r.get("skipped")] == [
        "no_crop_image"] * 2
    doc = write_metrics(files, model="m", benchmark="nocrop", metrics_out=tmp_path / "m.json",
                        n_boot=200, run_files=runs)
    cv = doc["views"]["crop"]
    assert cv["skipped"] == {"total": 2, "by_reason": {"no_crop_image": 2}}
    assert cv["accuracy"]["overall"]["n"] == len(df) - 2
    assert doc["zooming_gap"]["overall"]["n"] == len(df) - 2
