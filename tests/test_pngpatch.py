"""The banded PNG encoder: boxed copies are pixel-identical to draw_red_box and valid PNGs."""

from __future__ import annotations

import io
import random
import zlib

import numpy as np
import pytest
from PIL import Image

from r2i.images import draw_red_box, expand_box
from r2i.pngpatch import BandedPNG, adler32_combine


def _scene(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.uint8)
    base[:] = rng.integers(0, 255, 3, dtype=np.uint8)
    for _ in range(30):  # flat rectangles plus some noise: like the toy scenes and photos
        x0, y0 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
        x1, y1 = int(rng.integers(x0 + 1, w)), int(rng.integers(y0 + 1, h))
        base[y0:y1, x0:x1] = rng.integers(0, 255, 3, dtype=np.uint8)
    base[: h // 3] = rng.integers(0, 255, (h // 3, w, 3), dtype=np.uint8)
    return Image.fromarray(base)


def _decode(data: bytes) -> np.ndarray:
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.mode == "RGB"
    return np.asarray(im)


def test_adler32_combine_matches_zlib() -> None:
    rng = random.Random(1)
    for _ in range(50):
        a = rng.randbytes(rng.randrange(0, 5000))
        b = rng.randbytes(rng.randrange(0, 70000))
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


@pytest.mark.parametrize("band_rows", [1, 7, 32])
def test_plain_encoding_roundtrips(band_rows: int) -> None:
    img = _scene(173, 129, seed=band_rows)
    data = BandedPNG(img, band_rows=band_rows).encode()
    assert np.array_equal(_decode(data), np.asarray(img))


def test_boxed_copies_equal_draw_red_box() -> None:
    img = _scene(311, 257, seed=3)
    enc = BandedPNG(img, band_rows=16)
    w, h = img.size
    rng = random.Random(7)
    boxes = [(0, 0, w, h), (0, 0, 5, 5), (w - 9, h - 9, w, h), (10, 15, 11, 17), (20, 31, 90, 32),
             (20, 32, 90, 48), (-30, -30, 40, 40), (100, 100, 10000, 10000)]
    for _ in range(40):
        x0, y0 = rng.uniform(-20, w), rng.uniform(-20, h)
        boxes.append((x0, y0, x0 + rng.uniform(1, 120), y0 + rng.uniform(1, 120)))
    for box in boxes:
        for width in (1, 5, 9):
            try:
                want = draw_red_box(img, box, width=width, color=(255, 0, 0))
            except ValueError:
                with pytest.raises(ValueError):
                    enc.with_box(box, width=width)
                continue
            got = _decode(enc.with_box(box, width=width, color=(255, 0, 0)))
            assert np.array_equal(got, np.asarray(want)), (box, width)
    # the base encoding is untouched by the boxed copies
    assert np.array_equal(_decode(enc.encode()), np.asarray(img))


def test_mcq_geometry_and_colour() -> None:
    img = _scene(400, 300, seed=5)
    box = expand_box((100, 80, 160, 120), 0.05, 400, 300)
    got = _decode(BandedPNG(img).with_box(box, width=5, color=(0, 255, 12)))
    assert np.array_equal(got, np.asarray(draw_red_box(img, box, width=5, color=(0, 255, 12))))


def test_boxed_copy_reencodes_only_a_few_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    img = _scene(200, 640, seed=9)
    enc = BandedPNG(img, band_rows=32)  # 20 bands
    calls = []
    real = enc._encode_band
    monkeypatch.setattr(enc, "_encode_band", lambda rows, prev: calls.append(len(rows)) or real(rows, prev))
    enc.with_box((10, 100, 50, 120))  # rows 100..119: band 3, plus band 4 (Up filter)
    assert len(calls) == 2


def test_not_rgb_input_is_converted() -> None:
    img = _scene(64, 48).convert("L")
    assert np.array_equal(_decode(BandedPNG(img).encode()), np.asarray(img.convert("RGB")))
