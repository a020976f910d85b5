"""The training prompt budget (r2i.train.budget, r2i.synthesis.dataset) against verl's OWN
``RLHFDataset`` overlong filter, on a boxed image above 12 MP, with a Qwen2.5-VL processor built
locally from the real Qwen vocabulary (tests/qwen_processor.py).

verl and the vocabulary come from ``tests/requirements-verl.txt`` (installed by .ci/run with
``--no-deps``, so nothing can pull another torch); without them the verl test skips saying how to
install them.

One third-party helper cannot run here: ``qwen_vl_utils`` (which verl calls to fetch images)
imports torchvision at module level, and PyPI's torchvision wheels are CUDA builds that do not
load against the CPU torch. When it cannot be imported, the test puts an image-only stand-in in
its place that applies the sizing rule qwen_vl_utils documents for images (sides rounded to
multiples of 28, 4 .. 16384 visual tokens), so verl's own filter, chat template call and processor
call still run. On a machine with a working qwen_vl_utils (the GPU training image) the real one is
used. This is said again in docs/training.md.
"""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from r2i.packagedata import prompt_path
from r2i.prompts import default_template
from r2i.qwen_vision import smart_resize, verl_image_tokens
from r2i.synthesis.dataset import fit_to_budget, to_verl_row, write_verl_parquet
from r2i.synthesis.records import Row
from r2i.train.budget import (
    check_prompt_budget,
    derive_max_prompt_length,
    item_prompt_tokens,
    prompt_token_bound,
)

MIN_PIXELS, MAX_PIXELS = 262144, 16777216  # the method's training bounds


def _boxed_png(w: int, h: int) -> bytes:
    img = Image.new("RGB", (w, h), (200, 210, 220))
    draw = ImageDraw.Draw(img)
    for x in range(0, w, 97):
        draw.line([(x, 0), (x, h)], fill=(90, 120, 60), width=3)
    draw.rectangle([w // 2, h // 2, w // 2 + 60, h // 2 + 40], outline=(255, 0, 0), width=5)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _row(item_id: str, blob: bytes) -> Row:
    rec = {
        "mcq_text": "What color is the mug inside the red box?\nA. red\nB. blue\nC. green\nD. white",
        "answer_letter": "B", "question": "What color is the mug?", "ground_truth": "blue",
        "focus_question": "Focus on the red box. What color is the mug?",
        "options": ["red", "blue", "green", "white"], "crop_box": [10, 10, 70, 50],
        "box_expanded": [8, 8, 72, 52], "image_hash": f"h-{item_id}", "image_path": "x.jpg",
        "phrase": "mug", "agreement": 1.0, "student_correct": 0,
        "votes": [{"model": "teacher-a"}, {"model": "teacher-b"}],
    }
    return Row(item_id, item_id, "kept", None, rec, blob)


SETTINGS = {"data_source": "r2i", "ability": "fine_grained_perception",
            "max_pixels": MAX_PIXELS, "min_pixels": MIN_PIXELS, "max_prompt_length": None}


def _write(tmp_path: Path, rows: list[Row], settings: dict | None = None) -> Path:
    fmt = default_template("answer_format")
    s = settings or SETTINGS
    out = [to_verl_row(r, i, "train", fmt, s) for i, r in enumerate(rows)]
    path = tmp_path / "train.parquet"
    write_verl_parquet(path, out)
    return path


def test_images_are_stored_within_the_training_max_pixels_and_bounded() -> None:
    fmt = default_template("answer_format")
    big = fit_to_budget(_row("a", _boxed_png(5000, 4000)), fmt, {**SETTINGS, "max_pixels": 4_000_000})
    w, h = big["image_size"]
    assert w * h <= 4_000_000 and abs(w / h - 1.25) < 0.01 and big["image_scale"] < 1
    assert Image.open(io.BytesIO(big["blob"])).size == (w, h)
    small = fit_to_budget(_row("b", _boxed_png(1600, 1200)), fmt, SETTINGS)
    assert small["image_scale"] == 1.0 and small["image_size"] == [1600, 1200]
    # 1600x1200 -> 1596x1204 (multiples of 28) -> 57 x 43 cells = 2451 visual tokens (Qwen2.5-VL)
    assert verl_image_tokens(1200, 1600, MIN_PIXELS, MAX_PIXELS, factors=(28,)) == 57 * 43
    assert small["prompt_tokens"] == prompt_token_bound(
        fmt.render(question=_row("b", b"").record["mcq_text"]), (1600, 1200), MIN_PIXELS,
        MAX_PIXELS)


def test_train_length_is_derived_and_a_short_configured_one_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row("big", _boxed_png(4096, 3072)), _row("s", _boxed_png(800, 600))])
    derived = derive_max_prompt_length([path], MIN_PIXELS, MAX_PIXELS)
    assert derived % 128 == 0 and derived > 16000  # a 12.6 MP image: ~16k visual tokens
    check_prompt_budget([path], derived, MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(ValueError, match=r"max_prompt_length=8192 is too small for 1 of 2 items"):
        check_prompt_budget([path], 8192, MIN_PIXELS, MAX_PIXELS)


def test_dataset_counts_items_over_its_prompt_budget_in_the_funnel(tmp_path: Path) -> None:
    """An item that would still not fit (synthesis.dataset.max_prompt_length) is dropped by the
    dataset stage with reason prompt_too_long, in funnel.json, instead of vanishing in verl."""
    import json

    from r2i.io import write_json
    from r2i.synthesis.dataset import gather
    from r2i.synthesis.records import write_rows

    shard = tmp_path / "shards" / "000"
    shard.mkdir(parents=True)
    rows = [_row("big", _boxed_png(4096, 3072)), _row("small", _boxed_png(1300, 1300))]
    write_rows(shard / "difficulty.parquet", rows)
    write_json(tmp_path / "summary.json", {"files": 2, "kept": 2, "dropped": 0})
    out = {k: tmp_path / "ds" / f"{k}" for k in ("train.parquet", "val.parquet", "README.md",
                                                  "funnel.json", "contamination.json")}
    funnel = gather(
        shard_root=tmp_path / "shards", shards=["000"], stages=["difficulty"],
        manifest_summary_path=tmp_path / "summary.json", benchmarks={},
        answer_format_path=str(prompt_path("answer_format")),
        settings={**SETTINGS, "val_fraction": 0.0, "seed": 1, "max_prompt_length": 8192},
        run="t", models={}, simulated=True, out_train=out["train.parquet"],
        out_val=out["val.parquet"], out_card=out["README.md"], out_funnel=out["funnel.json"],
        out_contamination=out["contamination.json"])
    stage = {s["stage"]: s for s in funnel["stages"]}["prompt_budget"]
    assert stage["kept"] == 1 and stage["reasons"] == {"prompt_too_long": 1}
    assert funnel["prompt_budget"]["dropped_prompt_too_long"] == 1
    assert funnel["prompt_budget"]["largest_prompt_tokens"] <= 8192
    assert json.loads(out["funnel.json"].read_text())["prompt_budget"]["max_prompt_length"] == 8192
    import pyarrow.parquet as pq

    assert pq.read_table(out["train.parquet"]).num_rows == 1


def _qwen_vl_utils_or_stand_in(monkeypatch: pytest.MonkeyPatch) -> str:
    try:
        import qwen_vl_utils  # noqa: F401

        return "qwen_vl_utils"
    except Exception:  # ImportError, or torchvision failing to load against the CPU torch
        pass

    def process_vision_info(messages, image_patch_size=14, return_video_metadata=False):
        f = image_patch_size * 2
        images = []
        for m in messages:
            for c in m["content"] if isinstance(m["content"], list) else []:
                if isinstance(c, dict) and c.get("type") == "image":
                    img = c["image"].convert("RGB")
                    h, w = smart_resize(img.height, img.width, f, 4 * f * f, 16384 * f * f)
                    images.append(img.resize((w, h), Image.Resampling.BICUBIC))
        return (images or None), None

    stand_in = types.ModuleType("qwen_vl_utils")
    stand_in.process_vision_info = process_vision_info  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "qwen_vl_utils", stand_in)
    return "image-only stand-in (qwen_vl_utils needs torchvision)"


@pytest.mark.e2e
def test_verl_rlhf_dataset_keeps_a_12mp_item_with_the_derived_length(tmp_path, monkeypatch):
    rl = pytest.importorskip(
        "verl.utils.dataset.rl_dataset",
        reason="verl is not installed: pip install --no-deps -r tests/requirements-verl.txt")
    from omegaconf import OmegaConf

    from .qwen_processor import qwen2_5_vl_processor, vocab_file

    if vocab_file() is None:
        pytest.skip("qwen-agent (the Qwen vocabulary) is not installed: "
                    "pip install --no-deps -r tests/requirements-verl.txt")
    how = _qwen_vl_utils_or_stand_in(monkeypatch)
    processor = qwen2_5_vl_processor(MIN_PIXELS, MAX_PIXELS)
    big = _boxed_png(4096, 3072)  # 12.58 MP
    path = _write(tmp_path, [_row("big", big)])
    derived = derive_max_prompt_length([path], MIN_PIXELS, MAX_PIXELS)

    def verl_dataset(max_len: int):
        cfg = OmegaConf.create({
            "prompt_key": "prompt", "image_key": "images", "max_prompt_length": max_len,
            "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1,
            "truncation": "error", "cache_dir": str(tmp_path / "verl-cache"),
            "mm_processor_kwargs": {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS},
        })
        return rl.RLHFDataset([str(path)], processor.tokenizer, cfg, processor=processor)

    assert len(verl_dataset(8192)) == 0  # the old default: verl drops it without a word
    kept = verl_dataset(derived)
    assert len(kept) == 1, how  # the derived length keeps it
    # our bound is an upper bound of verl's own count, and not a loose one
    doc = kept.dataframe[0]
    counted = _verl_length(rl.RLHFDataset, doc, processor)
    import pyarrow.parquet as pq

    info = pq.read_table(path).column("extra_info").to_pylist()[0]
    bound = item_prompt_tokens(info, MIN_PIXELS, MAX_PIXELS)
    print(f"\n12.6 MP item: verl counts {counted} prompt tokens ({how}); our bound {bound}; "
          f"derived data.max_prompt_length {derived}")
    assert counted <= bound <= counted + 800 and counted > 8192


def _verl_length(cls, doc, processor) -> int:
    """The length verl's filter computes for one row (its own helper functions)."""
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    self = cls.__new__(cls)
    self.processor, self.image_key, self.video_key, self.audio_key = processor, "images", "videos", "audios"
    messages = cls._build_messages(self, dict(doc), key="prompt")
    raw = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images, videos, audios = cls._process_multi_modal_info(messages, 14, None)
    inputs = build_multimodal_processor_inputs(
        processor, text=[raw], images=images, videos=videos, audio=audios,
        mm_processor_kwargs={"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS})
    return len(inputs["input_ids"][0])
