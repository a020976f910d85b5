"""Benchmark converters (r2i.evaluation.benchmarks) and the missing-file message."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from r2i.evaluation import BenchmarkMissingError, EvalWorkflow, load_benchmark
from r2i.evaluation.benchmarks import options_from_query


def _png(color: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _zoombench_parquet(path: Path, spelling: str) -> Path:
    q, a = ("prompt", "answer") if spelling == "hf" else ("query", "response")
    rows = [
        {"image": {"bytes": _png("red"), "path": None}, "crop_image": {"bytes": _png("blue"), "path": None},
         q: "What color is the sign?\nA. red\nB. blue\nC. green\nD. gray", a: "B",
         "bbox": [1, 2, 11, 12], "question_type": "color"},
        {"image": {"bytes": _png("green"), "path": None}, "crop_image": {"bytes": _png("gray"), "path": None},
         q: "How many dots?", a: "7", "bbox": None, "question_type": "counting"},
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("spelling", ["hf", "query_response"])
def test_zoombench_parquet_both_spellings(tmp_path: Path, spelling: str) -> None:
    path = _zoombench_parquet(tmp_path / "zb.parquet", spelling)
    items = load_benchmark("zb", {"format": "zoombench", "path": str(path)})
    assert [it.id for it in items] == ["0", "1"]
    first, second = items
    assert first.query.startswith("What color") and first.reference == "B"
    assert first.options == ["red", "blue", "green", "gray"]
    assert first.bbox == [1.0, 2.0, 11.0, 12.0] and first.dimension == "color"
    assert Image.open(io.BytesIO(first.images[0])).getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(io.BytesIO(first.crop_images[0])).getpixel((0, 0)) == (0, 0, 255)
    assert second.bbox is None and second.options == [] and second.reference == "7"
    assert first.view_images("crop") == first.crop_images
    assert first.view_images("full") == first.images


def test_json_format_with_image_root(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(_png("red"))
    (root / "a_crop.png").write_bytes(_png("blue"))
    data = [{"images": ["a.png"], "crop_images": ["a_crop.png"], "query": "Color?",
             "response": "red", "bbox": [0, 0, 5, 5], "type": "color"},
            {"images": ["a.png"], "query": "Text?", "response": "SALE"}]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    items = load_benchmark("j", {"format": "json", "path": str(path), "image_root": str(root)})
    assert items[0].dimension == "color" and items[0].crop_images and items[0].bbox == [0, 0, 5, 5]
    assert items[1].crop_images == [] and items[1].dimension == ""
    with pytest.raises(ValueError, match="no crop image"):
        items[1].view_images("crop")


def test_toy_benchmark_converts(tmp_path: Path) -> None:
    from r2i.toy.world import generate_world, size_params

    generate_world(tmp_path, seed=0, **size_params("tiny"))
    items = load_benchmark("toy_zoombench", {
        "format": "zoombench", "path": str(tmp_path / "benchmark" / "zoombench_toy.parquet")})
    assert len(items) >= 8
    assert all(it.images and it.crop_images and it.bbox and it.dimension for it in items)
    assert any(it.options for it in items) and any(not it.options for it in items)


def test_missing_zoombench_says_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "ZoomBench" / "test.parquet"
    with pytest.raises(BenchmarkMissingError) as err:
        load_benchmark("zoombench", {"format": "zoombench", "path": str(missing)})
    msg = str(err.value)
    assert "benchmark 'zoombench'" in msg and str(missing) in msg
    assert "inclusionAI/ZoomBench" in msg and "Hugging Face" in msg
    with pytest.raises(BenchmarkMissingError, match=r"benchmark 'mine'.*JSON"):
        load_benchmark("mine", {"format": "json", "path": str(tmp_path / "x.json")})


def test_workflow_helper_checks_config(tmp_path: Path) -> None:
    from r2i.config import validate_config

    cfg = validate_config({
        "pools": {"p": str(tmp_path)},
        "endpoints": {"e": {"base_url": "http://127.0.0.1:1"}},
        "models": {r: {"endpoint": "e", "model": "m"} for r in
                   ("teacher", "teacher_b", "consensus", "student", "judge")},
        "benchmarks": {"zb": {"format": "zoombench", "path": str(tmp_path / "none.parquet")}},
        "evaluation": {"benchmarks": ["zb", "nope"]},
    })
    wf = EvalWorkflow(cfg, tmp_path / "results")
    with pytest.raises(ValueError) as err:
        wf.targets()
    msg = str(err.value)
    assert "evaluation.models.sim-student.endpoint" in msg and "'nope'" in msg
    assert "evaluation.judge.endpoint" in msg

    class WC:
        benchmark = "zb"

    with pytest.raises(ValueError, match="inclusionAI/ZoomBench"):
        wf.benchmark_file(WC())


def test_options_from_query() -> None:
    assert options_from_query("Q?\nA. x\nB. y") == ["x", "y"]
    assert options_from_query("Q?\n(A) x\n(B) y\n(C) z") == ["x", "y", "z"]
    assert options_from_query("How many?") == []
    assert options_from_query("B. y\nC. z") == []
