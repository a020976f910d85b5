"""r2i.images: safe decoding of every bad-file kind, mode normalisation, box helpers, encoders."""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from r2i import images
from r2i.images import (
    ImageError,
    box_area_fraction,
    clamp_box,
    content_hash,
    crop_upscale,
    decode_image,
    draw_red_box,
    encode_jpeg,
    encode_png,
    expand_box,
    image_hash_bytes,
    load_image,
    probe_image,
    resize_to_max_pixels,
    to_data_url,
    to_rgb,
)

RED = (255, 0, 0)


# ---------------------------------------------------------------------------------- file builders
def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def save(img: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    img.save(path, format=fmt, **kw)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(w: int, h: int) -> bytes:
    """A valid-looking PNG whose header claims w x h pixels (a few hundred bytes on disk)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def exif_jpeg(path: Path, orientation: int) -> Path:
    """40x20 JPEG stored with red left half / blue right half and an EXIF orientation tag."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def reason_of(path: Path, **kw: object) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kw)  # type: ignore[arg-type]
    return info.value.reason


# ---------------------------------------------------------------------------------- bad files
def test_good_jpeg_and_png_load_as_rgb(tmp_path: Path) -> None:
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
        img = load_image(save(noise(33, 17), tmp_path / f"a.{ext}", fmt))
        assert img.mode == "RGB" and img.size == (33, 17)


def test_zero_bytes(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert reason_of(p) == "zero_bytes"


def test_text_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n" * 20)
    assert reason_of(p) == "not_an_image"


def test_heic_is_unsupported_format(tmp_path: Path) -> None:
    p = tmp_path / "phone.heic"
    p.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100)
    assert reason_of(p) == "unsupported_format"


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    assert reason_of(tmp_path / "nope.png") == "unreadable"


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [("PNG", {}), ("JPEG", {"quality": 90}), ("JPEG", {"quality": 90, "progressive": True})],
)
@pytest.mark.parametrize("frac", [0.3, 0.9])
def test_truncated_files(tmp_path: Path, fmt: str, kw: dict[str, object], frac: float) -> None:
    data = io.BytesIO()
    noise(128, 96).save(data, fmt, **kw)
    raw = data.getvalue()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(raw[: int(len(raw) * frac)])
    assert reason_of(p) == "truncated"
    # The manifest's probe must agree, with and without the JPEG draft shortcut.
    for draft in (True, False):
        with pytest.raises(ImageError) as info:
            probe_image(p.read_bytes(), str(p), jpeg_draft=draft)
        assert info.value.reason == "truncated"


def test_png_header_only_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "stub.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert reason_of(p) == "corrupt"


def test_decompression_bomb_huge_header(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png(100_000, 100_000))  # 10 gigapixels claimed, 100 bytes on disk
    assert p.stat().st_size < 200
    assert reason_of(p) == "decompression_bomb"


def test_decompression_bomb_per_call_limit(tmp_path: Path) -> None:
    p = save(noise(20, 20), tmp_path / "small.png", "PNG")
    assert reason_of(p, max_pixels=399) == "decompression_bomb"
    assert load_image(p, max_pixels=400).size == (20, 20)


def test_decompression_bomb_warning_is_an_error(tmp_path: Path) -> None:
    """Between the limit and 2x the limit Pillow only warns; that must still be a bomb."""
    p = save(noise(20, 20), tmp_path / "small.png", "PNG")
    old = images.get_max_pixels()
    try:
        images.set_max_pixels(300)  # 400 px: above the limit, below Pillow's hard error (600)
        for action in ("error", "ignore"):  # r2i's import-time filter, or a framework's reset
            with warnings.catch_warnings():
                warnings.simplefilter(action, Image.DecompressionBombWarning)
                assert reason_of(p) == "decompression_bomb"
    finally:
        images.set_max_pixels(old)
    assert images.get_max_pixels() == images.DEFAULT_MAX_PIXELS


def test_truncation_guard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    p = save(noise(8, 8), tmp_path / "a.png", "PNG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(p)


def test_image_error_message_and_pickle(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(p)
    err = info.value
    assert str(p) in str(err) and "zero_bytes" in str(err)
    assert err.reason in images.REASONS
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, back.detail) == (err.path, err.reason, err.detail)


# ---------------------------------------------------------------------------------- modes
def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    p = save(img, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    out = load_image(p)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))  # type: ignore[misc]
    assert r > 240 and g < 15 and b < 15


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    p = save(Image.fromarray(arr), tmp_path / "g16.png", "PNG")
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")
    out = np.asarray(load_image(p))
    assert out.shape == (4, 4, 3)
    assert list(out[0, :, 0]) == [0, 1, 128, 255]  # Pillow's convert would give 0, 255, 255, 255


def test_32bit_int_and_float_modes() -> None:
    i_img = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert list(np.asarray(to_rgb(i_img))[0, :, 0]) == [0, 255]
    wide = Image.fromarray(np.array([[-100, 100_000]], dtype=np.int32), mode="I")
    assert list(np.asarray(to_rgb(wide))[0, :, 0]) == [0, 255]  # out of 16-bit range: stretched
    f_img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert list(np.asarray(to_rgb(f_img))[0, :, 0]) == [0, 128, 255]


def test_palette_png_with_transparency_composites_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black, 1 red
    img.paste(0, (0, 0, 4, 8))  # left half index 0 = transparent
    p = save(img, tmp_path / "pal.png", "PNG", transparency=0)
    with Image.open(p) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)  # transparent black -> white, not black
    assert out.getpixel((6, 1)) == RED


def test_rgba_and_la_composite_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    out = load_image(save(rgba, tmp_path / "a.png", "PNG"))
    r, g, b = out.getpixel((0, 0))  # type: ignore[misc]
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    la = Image.new("LA", (4, 4), (0, 0))  # fully transparent black
    assert load_image(save(la, tmp_path / "la.png", "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_one_bit_and_grey(tmp_path: Path) -> None:
    one = Image.new("1", (8, 8), 1)
    one.paste(0, (0, 0, 4, 8))
    out = load_image(save(one, tmp_path / "one.png", "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((7, 0)) == (255, 255, 255)
    grey = load_image(save(Image.new("L", (4, 4), 77), tmp_path / "g.jpg", "JPEG"))
    assert grey.mode == "RGB" and abs(grey.getpixel((0, 0))[0] - 77) <= 1  # type: ignore[index]


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in (RED, (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert load_image(p).getpixel((5, 5)) == RED


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    p = exif_jpeg(tmp_path / f"rot{orientation}.jpg", orientation)
    with Image.open(p) as raw:
        assert raw.size == (40, 20)
    out = load_image(p)
    if orientation == 3:  # 180 degrees: red ends up on the right
        assert out.size == (40, 20)
        r, _, b = out.getpixel((35, 10))  # type: ignore[misc]
    else:
        assert out.size == (20, 40)  # width/height swapped after the transpose
        # 6 = rotate 90 clockwise to display: the stored left (red) half becomes the top.
        y = 5 if orientation == 6 else 35
        r, _, b = out.getpixel((10, y))  # type: ignore[misc]
    assert r > 200 and b < 60
    info = probe_image(p.read_bytes(), str(p))
    assert (info.width, info.height) == out.size and info.orientation == orientation


def test_broken_exif_does_not_drop_image(tmp_path: Path) -> None:
    img = noise(16, 16)
    p = tmp_path / "badexif.jpg"
    img.save(p, "JPEG", exif=b"Exif\x00\x00garbage-not-tiff")
    assert load_image(p).size == (16, 16)


def test_probe_agrees_with_load(tmp_path: Path) -> None:
    good = save(noise(50, 40), tmp_path / "g.jpg", "JPEG")
    info = probe_image(good.read_bytes(), str(good))
    assert info.decoded and (info.format, info.width, info.height) == ("JPEG", 50, 40)
    small = probe_image(good.read_bytes(), str(good), min_side=40)
    assert not small.decoded and (small.width, small.height) == (50, 40)


def test_content_hash(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # > 1 MiB chunk, exercises streaming
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert content_hash(p) == want == image_hash_bytes(data)
    assert decode_image(encode_png(noise(4, 4)), "mem").size == (4, 4)


# ---------------------------------------------------------------------------------- boxes
def test_clamp_box() -> None:
    assert clamp_box((-5, -3, 50, 60), 40, 30) == (0, 0, 40, 30)
    assert clamp_box((10.2, 10.7, 20.1, 20.9), 100, 100) == (10, 10, 21, 21)  # rounds outward
    assert clamp_box((5, 5, 5, 5), 10, 10) == (5, 5, 5, 5)
    x0, y0, x1, y1 = clamp_box((200, 200, 300, 300), 100, 100)  # outside: empty, not an error
    assert x0 == x1 and y0 == y1
    for bad in [(10, 0, 5, 5), (0, 0, float("nan"), 1), (1, 2, 3)]:
        with pytest.raises(ValueError):
            clamp_box(bad, 10, 10)


def test_box_area_fraction() -> None:
    assert box_area_fraction((0, 0, 10, 10), 100, 100) == pytest.approx(0.01)
    assert box_area_fraction((-10, -10, 10, 10), 100, 100) == pytest.approx(0.01)  # clamped
    assert box_area_fraction((0, 0, 100, 10), 100, 100) == pytest.approx(0.10)
    assert box_area_fraction((500, 500, 600, 600), 100, 100) == 0.0


def test_expand_box() -> None:
    # 100 x 40 box: 5% is 5 px horizontally and 2 px vertically on each side.
    assert expand_box((100, 100, 200, 140), 0.05, 1000, 1000) == (95, 98, 205, 142)
    assert expand_box((100, 100, 200, 140), frac=0.05, w=1000, h=1000) == (95, 98, 205, 142)
    assert expand_box((0, 0, 100, 40), 0.05, 102, 41) == (0, 0, 102, 41)  # clamped to the image
    assert expand_box((10, 10, 20, 20), 0.0, 100, 100) == (10, 10, 20, 20)
    with pytest.raises(TypeError):
        expand_box((0, 0, 1, 1))


def test_crop_upscale_doubles_size() -> None:
    img = Image.new("RGB", (100, 80), (0, 0, 255))
    img.paste(RED, (20, 10, 50, 40))
    crop = crop_upscale(img, (20, 10, 50, 40))
    assert crop.size == (60, 60)
    assert crop.getpixel((30, 30)) == RED
    assert crop_upscale(img, (90, 70, 130, 130)).size == (20, 20)  # clamped first
    assert crop_upscale(img, (20.5, 10.5, 49.5, 39.5), 3.0).size == (90, 90)
    with pytest.raises(ValueError):
        crop_upscale(img, (200, 200, 300, 300))


def test_draw_red_box_pixels() -> None:
    img = Image.new("RGB", (100, 80), (0, 128, 0))
    out = draw_red_box(img, (20, 10, 60, 50), width=5)
    assert out is not img and img.getpixel((20, 10)) == (0, 128, 0)  # original untouched
    a = np.asarray(out)
    red = np.all(a == RED, axis=-1)
    # Stroke inside the half-open box: outer edge on columns 20 and 59, rows 10 and 49.
    assert red[10:50, 20:25].all() and red[10:50, 55:60].all()
    assert red[10:15, 20:60].all() and red[45:50, 20:60].all()
    assert not red[15:45, 25:55].any()  # interior untouched
    assert red.sum() == 40 * 40 - 30 * 30
    outside = np.ones_like(red)
    outside[10:50, 20:60] = False
    assert not red[outside].any()  # nothing outside the box changes
    # At the image border the stroke stays fully visible.
    edge = np.all(np.asarray(draw_red_box(img, (-10, -10, 30, 30))) == RED, axis=-1)
    assert edge[0, 0:30].all() and edge[0:30, 0].all()


def test_draw_red_box_converts_mode() -> None:
    out = draw_red_box(Image.new("L", (20, 20), 0), (0, 0, 20, 20), width=2, color=(0, 0, 255))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (0, 0, 255)


def test_resize_to_max_pixels() -> None:
    img = Image.new("RGB", (400, 300))
    assert resize_to_max_pixels(img, 120_000) is img
    small = resize_to_max_pixels(img, 30_000)
    assert small.width * small.height <= 30_000
    assert small.size == (200, 150)
    odd = resize_to_max_pixels(Image.new("RGB", (1001, 333)), 12_345)
    assert odd.width * odd.height <= 12_345 and abs(odd.width / odd.height - 1001 / 333) < 0.05


# ---------------------------------------------------------------------------------- encoding
def test_encoders_and_data_url() -> None:
    img = noise(64, 48)
    png = encode_png(img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(img))
    jpg = encode_jpeg(img.convert("RGBA"))
    assert jpg[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(jpg)).size == (64, 48)
    url = to_data_url(png, "image/png")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png
    with pytest.raises(ValueError):
        to_data_url(png, "png")
