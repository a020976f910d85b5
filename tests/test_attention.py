"""Attention coverage (r2i.evaluation.attention) on tiny, randomly initialised Qwen-VL models.

The models are built locally from configs by r2i.toy.tiny_vlm (no hub download). A random model
attends almost uniformly, so its coverage must be close to the box's share of the token grid.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="attention coverage needs torch: pip install -e '.[attention]'")
transformers = pytest.importorskip("transformers", reason="attention coverage needs transformers")

from PIL import Image  # noqa: E402

from r2i.evaluation.attention import (  # noqa: E402
    box_to_grid_mask,
    coverage_for_benchmark,
    coverage_for_item,
    heatmap_image,
    image_only_processor,
    load_model,
    model_input_size,
    resolve_layer,
)
from r2i.evaluation.benchmarks import EvalItem  # noqa: E402
from r2i.toy.tiny_vlm import KINDS as TINY_KINDS  # noqa: E402
from r2i.toy.tiny_vlm import build_tiny_vlm  # noqa: E402

KINDS = list(TINY_KINDS)


@pytest.fixture(scope="module", params=KINDS)
def tiny(request, tmp_path_factory):
    kind = request.param
    if kind == "qwen3_vl" and not hasattr(transformers, "Qwen3VLForConditionalGeneration"):
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3-VL")
    d = tmp_path_factory.mktemp(kind)
    build_tiny_vlm(kind, d, seed=0)
    image_only_processor(d, kind)  # what load_model falls back to without torchvision: must build
    model, processor = load_model(d, device="cpu")
    return kind, d, model, processor


def _random_image(rng, w, h):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _random_box(rng, w, h):
    bw, bh = rng.uniform(0.15, 0.7) * w, rng.uniform(0.15, 0.7) * h
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return [x0, y0, x0 + bw, y0 + bh]


def test_box_to_grid_mask_hand_computed():
    # 300x200 image resized to 252x168 (patch 14, grid_thw (1, 12, 18)), tokens 6x9 of 28 px.
    # Box (30, 40, 150, 120) * 0.84 -> (25.2, 33.6, 126, 100.8) px -> x 0.9..4.5, y 1.2..3.6 cells.
    mask = box_to_grid_mask((30, 40, 150, 120), (300, 200), (252, 168), (6, 9), "area")
    fx = np.array([0.1, 1, 1, 1, 0.5, 0, 0, 0, 0])
    fy = np.array([0, 0.8, 1, 0.6, 0, 0])
    np.testing.assert_allclose(mask, np.outer(fy, fx), atol=1e-9)
    assert mask.mean() == pytest.approx(0.16)  # = the box's share of the image
    # whole image -> all ones; box outside -> zeros; reversed corners are accepted
    assert np.all(box_to_grid_mask((0, 0, 300, 200), (300, 200), (252, 168), (6, 9), "area") == 1)
    assert box_to_grid_mask((400, 300, 500, 400), (300, 200), (252, 168), (6, 9),
                            "area").sum() == 0
    np.testing.assert_allclose(box_to_grid_mask((150, 120, 30, 40), (300, 200), (252, 168), (6, 9),
                                                "area"), mask)


def test_box_to_grid_cells_is_the_reference_convention():
    """Default mapping ``cells``: every token cell the box touches counts whole (edges floored and
    ceiled), at least 2 cells per axis; uniform attention then scores the touched-cell share."""
    # Same case as above: x 0.9..4.5 -> columns 0..4, y 1.2..3.6 -> rows 1..3: 15 of 54 cells.
    mask = box_to_grid_mask((30, 40, 150, 120), (300, 200), (252, 168), (6, 9))
    expect = np.zeros((6, 9))
    expect[1:4, 0:5] = 1
    np.testing.assert_array_equal(mask, expect)
    # A 5x5 px box inside one cell (x, y 3.0..3.15 cells) is widened to 2x2 cells.
    tiny_box = box_to_grid_mask((100, 100, 105, 105), (300, 200), (252, 168), (6, 9))
    expect = np.zeros((6, 9))
    expect[3:5, 3:5] = 1
    np.testing.assert_array_equal(tiny_box, expect)
    # ... at the grid's right/bottom edge it grows inwards: columns 7, 8 and rows 4, 5.
    edge = box_to_grid_mask((295, 195, 300, 200), (300, 200), (252, 168), (6, 9))
    assert edge.sum() == 4 and edge[4:6, 7:9].sum() == 4
    # Uniform attention: cells -> touched-cell share (4/54), area -> the box's area share.
    uniform = np.full((6, 9), 1 / 54)
    area = box_to_grid_mask((100, 100, 105, 105), (300, 200), (252, 168), (6, 9), "area")
    assert float((uniform * tiny_box).sum()) == pytest.approx(4 / 54)
    assert float((uniform * area).sum()) == pytest.approx(25 / 60000)
    with pytest.raises(ValueError, match="box_mapping"):
        box_to_grid_mask((0, 0, 1, 1), (300, 200), (252, 168), (6, 9), "soft")


def test_layers_are_one_based_like_the_paper():
    assert resolve_layer(24, 36) == 24  # the 24th layer: outputs.attentions[23]
    assert resolve_layer(1, 36) == 1
    assert resolve_layer(40, 36) == 36 and resolve_layer(-1, 36) == 36 and resolve_layer(-36, 36) == 1
    with pytest.raises(ValueError, match="1-based"):
        resolve_layer(0, 36)


def test_item_on_hand_computed_case_and_layer_clamp(tiny):
    kind, _, model, processor = tiny
    img = _random_image(np.random.default_rng(1), 300, 200)
    res = coverage_for_item(model, processor, img, "What color is the car?", (30, 40, 150, 120),
                            layer=24, box_mapping="area")
    assert res["n_layers"] == 2 and res["layer"] == 2 and res["layer_requested"] == 24
    assert res["layer_index"] == 1
    first = coverage_for_item(model, processor, img, "q", (30, 40, 150, 120), layer=1)
    assert first["layer"] == 1 and first["layer_index"] == 0
    assert res["coverage_cells"] >= res["coverage_area"] - 1e-9
    unit = 28 if kind == "qwen2_5_vl" else 32
    gh, gw = res["grid"].shape
    assert res["grid_thw"] == [1, gh * 2, gw * 2]
    assert res["resized_size"] == [gw * unit, gh * unit]
    assert res["n_image_tokens"] == gh * gw
    assert res["grid"].sum() == pytest.approx(1.0)
    assert 0 < res["image_attention_share"] <= 1
    assert res["box_share"] == pytest.approx(0.16, abs=0.03)
    if kind == "qwen2_5_vl":
        assert (gh, gw) == (6, 9) and res["box_share"] == pytest.approx(0.16)


def test_hook_matches_full_attention_output(tiny):
    """The captured layer equals the model's own output_attentions for that layer."""
    _, _, model, processor = tiny
    img = _random_image(np.random.default_rng(2), 240, 180)
    box = (20, 30, 120, 150)
    # layer=1 is the FIRST decoder layer (1-based like the paper): outputs.attentions[0]
    res = coverage_for_item(model, processor, img, "How many apples?", box, layer=1)
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "How many apples?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    sized = img.resize(tuple(res["input_size"]), Image.Resampling.BICUBIC)
    inputs = processor(text=[text], images=[sized], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs, output_attentions=True, use_cache=False)
    row = out.attentions[0][0, :, -1, :].float().mean(0).numpy()
    pos = (inputs["input_ids"][0] == processor.image_token_id).numpy()
    grid = row[pos] / row[pos].sum()
    np.testing.assert_allclose(res["grid"].ravel(), grid, rtol=1e-4, atol=1e-7)
    assert res["coverage"] == pytest.approx(float((grid * res["mask"].ravel()).sum()), rel=1e-4)


def test_random_model_coverage_near_box_share(tiny):
    _, _, model, processor = tiny
    rng = np.random.default_rng(0)
    covs, shares = [], []
    for _ in range(8):
        w, h = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        img = _random_image(rng, w, h)
        box = _random_box(rng, w, h)
        res = coverage_for_item(model, processor, img, "Read the text on the sign.", box)
        assert 0.0 <= res["coverage"] <= 1.0 and 0.0 < res["box_share"] <= 1.0
        assert abs(res["coverage"] - res["box_share"]) < 0.25, res
        covs.append(res["coverage"])
        shares.append(res["box_share"])
    assert abs(np.mean(covs) - np.mean(shares)) < 0.1, (covs, shares)


def test_image_cap(tiny):
    _, _, model, processor = tiny
    img = _random_image(np.random.default_rng(3), 900, 300)
    res = coverage_for_item(model, processor, img, "q", (0, 0, 450, 300), max_pixels=400 * 100,
                            box_mapping="area")
    cw, ch = res["input_size"]
    assert cw * ch <= 400 * 100 and abs(cw / ch - 3.0) < 0.5
    assert res["orig_size"] == [900, 300]
    assert res["box_share"] == pytest.approx(0.5, abs=0.1)  # left half, on the token grid


def test_image_is_resized_like_the_qwen_processor_expects(tiny):
    """Sides become multiples of patch x merge within the pixel bounds before the processor, so
    the processor keeps the size and the token grid tiles the image exactly."""
    kind, _, model, processor = tiny
    unit = 28 if kind == "qwen2_5_vl" else 32
    for w, h, cap in ((301, 203, 2048 * 1024), (1000, 333, 300 * 100), (97, 61, 2048 * 1024)):
        iw, ih = model_input_size((w, h), processor, cap)
        assert iw % unit == 0 and ih % unit == 0 and iw * ih <= max(cap, unit * unit)
        img = _random_image(np.random.default_rng(w), w, h)
        res = coverage_for_item(model, processor, img, "q", (0, 0, w / 2, h), max_pixels=cap)
        assert res["input_size"] == [iw, ih] and res["resized_size"] == [iw, ih], res


def test_benchmark_and_heatmap(tiny, tmp_path):
    _, _, model, processor = tiny
    rng = np.random.default_rng(4)
    items = []
    for i, dim in enumerate(["color", "color", "counting", "ocr"]):
        img = _random_image(rng, 200, 160)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        items.append(EvalItem(id=f"it{i}", images=[buf.getvalue()], query="What color?",
                              reference="red", bbox=_random_box(rng, 200, 160), dimension=dim))
    items.append(EvalItem(id="nobox", images=items[0].images, query="q", reference="x"))
    out = tmp_path / "cov.jsonl"
    summary = coverage_for_benchmark((model, processor), items, layer=24, out_jsonl=out,
                                     heatmap_dir=tmp_path / "maps")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["it0", "it1", "it2", "it3"]
    assert summary["n"] == 4 and summary["skipped"] == 1 and summary["layer"] == 2
    assert summary["box_mapping"] == "cells" and set(summary["mappings"]) == {"cells", "area"}
    assert summary["mean_coverage"] == summary["mappings"]["cells"]["mean_coverage"]
    assert set(summary["per_dimension"]["color"]["mappings"]) == {"cells", "area"}
    assert set(summary["per_dimension"]) == {"color", "counting", "ocr"}
    assert summary["per_dimension"]["color"]["n"] == 2
    assert summary["per_dimension"]["color"]["mean_coverage"] == pytest.approx(
        np.mean([rows[0]["coverage"], rows[1]["coverage"]]))
    assert abs(summary["mean_coverage"] - summary["mean_box_share"]) < 0.1
    assert len(list((tmp_path / "maps").glob("*.png"))) == 4
    grid = np.random.default_rng(0).random((4, 5))
    hm = heatmap_image(Image.new("RGB", (200, 160), "white"), grid / grid.sum(), (10, 10, 90, 70))
    assert hm.size == (200, 160) and hm.mode == "RGB"


def test_coverage_for_benchmark_loads_model_dir(tiny, tmp_path):
    _, d, _, _ = tiny
    img = _random_image(np.random.default_rng(5), 160, 160)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    item = EvalItem(id="a", images=[buf.getvalue()], query="q", reference="r",
                    bbox=[0, 0, 80, 160], dimension="color")
    summary = coverage_for_benchmark(d, [item], layer=24, box_mapping="area")
    assert summary["n"] == 1 and summary["n_layers"] == 2
    assert summary["mean_box_share"] == pytest.approx(0.5)
