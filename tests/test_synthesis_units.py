"""Unit tests of the synthesis library pieces that need no model or Snakemake."""

from __future__ import annotations

import pytest
from PIL import Image

from r2i.synthesis.dataset import assign_splits, classify_dimension
from r2i.synthesis.records import dropped, kept, read_rows, write_rows
from r2i.synthesis.stages import build_options, format_options, render_boxed


def test_build_options_shuffles_reproducibly_and_marks_the_answer():
    opts, letter = build_options("orange", ["blue", "Orange", "green", "blue", "red"], 3, seed=7)
    assert len(opts) == 4 and opts[ord(letter) - 65] == "orange"
    assert sorted(opts) == ["blue", "green", "orange", "red"]  # duplicate and the answer removed
    assert build_options("orange", ["blue", "Orange", "green", "blue", "red"], 3, seed=7) == (opts, letter)
    letters = {build_options("a", ["b", "c", "d"], 3, seed=s)[1] for s in range(40)}
    assert letters == {"A", "B", "C", "D"}  # the answer is not always in the same place


def test_build_options_too_few_distractors():
    assert build_options("3", ["three", "3", "4"], 3, seed=1) is None  # "three" == "3"


def test_format_options():
    assert format_options(["x", "y"]) == "A. x\nB. y"


def test_render_boxed_expands_and_draws_red():
    img = Image.new("RGB", (1000, 800), (200, 200, 200))
    out, big = render_boxed(img, [100, 100, 200, 300], {"box_expand": 0.05, "box_width": 5, "box_color": [255, 0, 0]})
    assert big == [95, 90, 205, 310]
    assert out.getpixel((95, 200)) == (255, 0, 0) and out.getpixel((150, 200)) == (200, 200, 200)
    assert img.getpixel((95, 200)) == (200, 200, 200)  # the source image is untouched


@pytest.mark.parametrize(
    ("question", "dim"),
    [
        ("How many dots are on the card?", "counting"),
        ("What text is written on the sign?", "ocr"),
        ("What color is the sign reading EXIT?", "color"),
        ("What shape is the badge?", "structure"),
        ("What surface pattern does the tile have?", "material"),
        ("What kind of object is shown on the plaque?", "object_identification"),
        ("Where is it?", "other"),
    ],
)
def test_classify_dimension(question, dim):
    assert classify_dimension(question) == dim


def test_assign_splits_by_image_and_stable():
    hashes = [f"h{i}" for i in range(40)] * 3
    s1 = assign_splits(hashes, 0.1, seed=42)
    assert s1 == assign_splits(list(reversed(hashes)), 0.1, seed=42)
    assert sum(v == "val" for v in s1.values()) == 4
    assert set(assign_splits(["only"], 0.1, seed=1).values()) == {"train"}


def test_rows_roundtrip_and_duplicate_ids(tmp_path):
    rows = [kept("b", "p", {"x": 1}, b"\x89PNG"), dropped("a", "p", "too_large", {"y": [1, 2]})]
    write_rows(tmp_path / "t.parquet", rows)
    back = read_rows(tmp_path / "t.parquet")
    assert [r.item_id for r in back] == ["a", "b"] and back[1].blob == b"\x89PNG"
    assert read_rows(tmp_path / "t.parquet", only_kept=True)[0].record == {"x": 1}
    with pytest.raises(ValueError, match="duplicate item ids"):
        write_rows(tmp_path / "u.parquet", [*rows, kept("a", None, {})])


def test_contamination_index_matches_pixels_and_decodes_only_same_sized_images(tmp_path) -> None:
    """A pool image re-encoded into a benchmark (other bytes, same pixels) is found; images
    whose size no pool image has are compared by file hash only (never decoded)."""
    import hashlib
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from r2i.synthesis import dataset

    img = Image.effect_noise((64, 48), 40).convert("RGB")
    pool_file = tmp_path / "pool.png"
    img.save(pool_file, compress_level=9)
    other = io.BytesIO()
    img.save(other, format="PNG", compress_level=1)  # same pixels, other bytes
    small = io.BytesIO()
    img.resize((32, 24)).save(small, format="PNG")
    bench = tmp_path / "bench.parquet"
    pq.write_table(pa.table({
        "id": ["a"], "question": ["q?"], "answer": ["x"], "type": ["color"],
        "image": [{"bytes": other.getvalue(), "path": None}],
        "crop_image": [{"bytes": small.getvalue(), "path": None}],
    }), bench)
    sha = hashlib.sha256(pool_file.read_bytes()).hexdigest()
    decoded = []
    real = dataset.pixel_sha256
    dataset.pixel_sha256 = lambda data: decoded.append(1) or real(data)  # type: ignore[assignment]
    try:
        idx = dataset.contamination_index({"b": {"format": "zoombench", "path": str(bench)}},
                                          [(sha, str(pool_file))])
    finally:
        dataset.pixel_sha256 = real  # type: ignore[assignment]
    assert idx["pool_pixels"][sha] in idx["benchmarks"]["b"]["pixels"]
    assert idx["decoded_sizes"] == [[64, 48]] and len(decoded) == 2  # the crop was not decoded
