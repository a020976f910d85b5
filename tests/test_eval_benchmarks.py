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


def test_zoombench_reads_every_shard_folder_glob_or_list(tmp_path: Path) -> None:
    """A dataset saved in several parquet shards is read whole, whichever way it is named."""
    shards = tmp_path / "ZoomBench" / "data"
    shards.mkdir(parents=True)
    for k, color in enumerate(["red", "green", "blue"]):
        pd.DataFrame([{"id": f"s{k}", "image": {"bytes": _png(color), "path": None},
                       "crop_image": {"bytes": _png(color), "path": None},
                       "prompt": f"Color {k}?", "answer": color}]).to_parquet(
            shards / f"test-0000{k}-of-00003.parquet")
    expect = ["s0", "s1", "s2"]
    for path in (str(tmp_path / "ZoomBench"), str(shards / "test-*.parquet"),
                 [str(shards / "test-00000-of-00003.parquet"), str(shards / "test-0000[12]*")]):
        items = load_benchmark("zb", {"format": "zoombench", "path": path})
        assert [it.id for it in items] == expect, path
    spec = {"format": "zoombench", "path": str(shards / "train-*.parquet")}
    with pytest.raises(BenchmarkMissingError, match=r"train-\*\.parquet.*no parquet file matches"):
        load_benchmark("zb", spec)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchmarkMissingError, match=r"empty: no parquet file"):
        load_benchmark("zb", {"format": "zoombench", "path": str(empty)})


def test_json_images_relative_to_the_json_file_and_image_placeholders(tmp_path: Path,
                                                                      monkeypatch) -> None:
    bench = tmp_path / "bench"
    (bench / "images").mkdir(parents=True)
    (bench / "images" / "a.png").write_bytes(_png("red"))
    roots = tmp_path / "other_root"
    roots.mkdir()
    (roots / "b.png").write_bytes(_png("blue"))
    data = [{"images": ["images/a.png"], "query": "<image>\nWhat color is it?", "response": "red"},
            {"images": ["b.png"], "query": "Color? <image>", "response": "blue"}]
    (bench / "b.json").write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)  # relative to the JSON file, not the working directory
    items = load_benchmark("j", {"format": "json", "path": "bench/b.json",
                                 "image_root": str(roots)})
    assert [it.query for it in items] == ["What color is it?", "Color?"]
    assert Image.open(io.BytesIO(items[0].images[0])).getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(io.BytesIO(items[1].images[0])).getpixel((0, 0)) == (0, 0, 255)
    data.append({"id": "q7", "images": ["images/missing.png"], "query": "?", "response": "x"})
    (bench / "b.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark("j", {"format": "json", "path": "bench/b.json", "image_root": str(roots)})
    msg = str(err.value)
    assert "item q7" in msg and "images/missing.png" in msg
    assert str(roots / "images" / "missing.png") in msg and str(bench / "images") in msg


def test_workflow_inputs_are_every_shard(tmp_path: Path) -> None:
    from r2i.evaluation import benchmark_files_of

    for k in range(2):
        _zoombench_parquet(tmp_path / f"part-{k}.parquet", "hf")
    cfg = {"benchmarks": {"zb": {"format": "zoombench", "path": str(tmp_path / "part-*.parquet")}}}
    assert benchmark_files_of(cfg, "zb") == [str(tmp_path / "part-0.parquet"),
                                             str(tmp_path / "part-1.parquet")]


def test_contamination_hashes_use_the_same_loader(tmp_path: Path) -> None:
    """The dataset's contamination check sees every shard and the JSON images as evaluation does."""
    import hashlib

    from r2i.synthesis.dataset import benchmark_hashes

    for k, color in enumerate(["red", "green"]):
        pd.DataFrame([{"id": f"s{k}", "image": {"bytes": _png(color), "path": None},
                       "prompt": "?", "answer": "x"}]).to_parquet(tmp_path / f"p{k}.parquet")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png("blue"))
    (tmp_path / "b.json").write_text(json.dumps([{"images": ["img/a.png"], "query": "?",
                                                  "response": "x"}]))
    got = benchmark_hashes({"zb": {"format": "zoombench", "path": str(tmp_path / "p*.parquet")},
                            "j": {"format": "json", "path": str(tmp_path / "b.json")}})
    assert got["zb"]["files"] == {hashlib.sha256(_png(c)).hexdigest() for c in ("red", "green")}
    assert got["j"]["files"] == {hashlib.sha256(_png("blue")).hexdigest()}
