"""CPU image work of the R2I pipeline: safe decoding, hashing, box geometry, crops, overlays, encoding.

Every stage that touches pixels goes through this module, so that "the image" means the same thing
everywhere: the manifest's decodability check, the crops teachers see, the red-box overlay the student
is trained on and the bytes sent to models all start from :func:`load_image` (or the same decode path
in :func:`probe_image`).

Conventions
-----------
* A **box** is ``(x0, y0, x1, y1)`` in pixels of the (EXIF-transposed) image, half-open like
  :meth:`PIL.Image.Image.crop`: it covers columns ``x0 .. x1-1`` and rows ``y0 .. y1-1``. Inputs may be
  floats (segmenters return floats); helpers that feed Pillow return integer boxes rounded *outward*
  (floor the start, ceil the end) so the result always contains the requested region.
* Decoded images are always 8-bit ``RGB``; transparency is composited on white.
* Errors on bad input files are :class:`ImageError` with a short machine-friendly ``reason`` (one of
  :data:`REASONS`) that the manifest records as a drop reason.

Global state: importing this module sets Pillow's process-wide decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``) to :data:`DEFAULT_MAX_PIXELS` (change it with :func:`set_max_pixels`)
and turns ``DecompressionBombWarning`` into an error, for every ``Image.open`` in the process.
The functions here are thread-safe (no per-call changes to global state).
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from PIL import Image, ImageFile, UnidentifiedImageError

if TYPE_CHECKING:  # numpy is imported where used: only 16-bit/float images need it (~0.1 s)
    import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "REASONS",
    "Box",
    "ImageError",
    "ImageInfo",
    "IntBox",
    "box_area_fraction",
    "clamp_box",
    "content_hash",
    "crop_upscale",
    "decode_image",
    "draw_red_box",
    "encode_jpeg",
    "encode_png",
    "expand_box",
    "get_max_pixels",
    "image_hash_bytes",
    "load_image",
    "probe_image",
    "resize_to_max_pixels",
    "set_max_pixels",
    "to_data_url",
    "to_rgb",
]

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)``, half-open, in image pixels; floats allowed."""
IntBox = tuple[int, int, int, int]
"""A :data:`Box` snapped to integer pixels (what Pillow crops and draws)."""

# --------------------------------------------------------------------------------------------------
# Reason codes (stable strings: they end up in manifests, funnels and reports)

ZERO_BYTES: Final = "zero_bytes"
NOT_AN_IMAGE: Final = "not_an_image"
UNSUPPORTED_FORMAT: Final = "unsupported_format"
TRUNCATED: Final = "truncated"
CORRUPT: Final = "corrupt"
DECOMPRESSION_BOMB: Final = "decompression_bomb"
UNSUPPORTED_MODE: Final = "unsupported_mode"
UNREADABLE: Final = "unreadable"

REASONS: Final[frozenset[str]] = frozenset(
    {
        ZERO_BYTES,
        NOT_AN_IMAGE,
        UNSUPPORTED_FORMAT,
        TRUNCATED,
        CORRUPT,
        DECOMPRESSION_BOMB,
        UNSUPPORTED_MODE,
        UNREADABLE,
    }
)
"""Every reason an :class:`ImageError` can carry."""

#: Twice Pillow's own default (89.5 MP), i.e. the size at which Pillow itself hard-fails. Large enough
#: for panoramas and gigapixel-ish aerial tiles in the paper's pools (STPLS3D), small enough that one
#: decoded RGB image (~540 MB) cannot take a cluster job down.
DEFAULT_MAX_PIXELS: Final = 178_956_970

# Magic numbers of formats we know: a file that starts like an image but does not open is corrupt,
# not "not an image", which tells the user to look at their download instead of their folder layout.
_IMAGE_MAGICS: Final = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
# Extensions of real image formats Pillow cannot read (without plugins): "unsupported_format" is more
# useful to a user than "not_an_image" for an iPhone HEIC or a camera RAW.
_UNSUPPORTED_IMAGE_EXTENSIONS: Final = frozenset(
    {".heic", ".heif", ".svg", ".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf"}
)

_EXIF_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE_FOR_ORIENTATION: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES: Final = frozenset({5, 6, 7, 8})

# Formats whose EXIF sits in the header, so orientation is known without decoding pixels.
_HEADER_EXIF_FORMATS: Final = frozenset({"JPEG", "MPO", "TIFF", "WEBP"})

_WHITE: Final = (255, 255, 255)
_HASH_CHUNK: Final = 1 << 20


class ImageError(Exception):
    """A file that is not a usable image.

    ``reason`` is a stable code from :data:`REASONS` (used as the manifest's drop reason); ``detail``
    is the human explanation. The message names the file, because in a cluster log the file is the
    only thing a user can act on.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str = "") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason}" + (f" ({detail})" if detail else "")
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str, str]]:
        # Keep all three fields across process-pool boundaries.
        return (type(self), (self.path, self.reason, self.detail))


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What :func:`probe_image` learned about a file.

    ``width``/``height`` are after EXIF orientation, i.e. the size :func:`load_image` returns.
    ``decoded`` is False only when the probe stopped early because the image was too small.
    """

    format: str
    mode: str
    width: int
    height: int
    orientation: int
    decoded: bool


# --------------------------------------------------------------------------------------------------
# Decompression-bomb limit


def set_max_pixels(max_pixels: int) -> None:
    """Set the process-wide decompression-bomb limit (pixels, width*height).

    Pillow's own check (a warning above the limit, which we turn into an error) reads the global
    ``Image.MAX_IMAGE_PIXELS``, so the limit is global by nature; the ``max_pixels`` argument of the
    decoding functions can only tighten it. Worker processes inherit it only through fork.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def get_max_pixels() -> int:
    """The current process-wide decompression-bomb limit."""
    limit = Image.MAX_IMAGE_PIXELS
    return DEFAULT_MAX_PIXELS if limit is None else int(limit)


set_max_pixels(DEFAULT_MAX_PIXELS)
# Pillow only *warns* between the limit and twice the limit; r2i's policy is that the limit is the
# limit. Installed once (thread-safe, unlike per-call ``catch_warnings``); the explicit size check in
# ``_open`` enforces the same limit even where a framework (pytest) has reset the filters.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


# --------------------------------------------------------------------------------------------------
# Hashing


def image_hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of in-memory file bytes (the pipeline's content address of an image)."""
    return hashlib.sha256(data).hexdigest()


def content_hash(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, streamed in 1 MiB chunks so huge files do not fill memory."""
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Decoding


def _check_truncation_guard() -> None:
    # Pillow silently pads truncated files with grey when this global is True; then "decodable"
    # would mean nothing. Fail loudly instead of keeping broken images.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; r2i.images needs it False "
            "to detect truncated images"
        )


def _open(data: bytes, name: str, max_pixels: int | None) -> ImageFile.ImageFile:
    """Open (header only), mapping every failure to an :class:`ImageError`."""
    if not data:
        raise ImageError(name, ZERO_BYTES, "file is empty")
    limit = get_max_pixels() if max_pixels is None else min(int(max_pixels), get_max_pixels())
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, DECOMPRESSION_BOMB, str(e)) from e
    except UnidentifiedImageError as e:
        ext = Path(name).suffix.lower()
        if data.startswith(_IMAGE_MAGICS):
            raise ImageError(name, CORRUPT, "image signature but unreadable header") from e
        if ext in _UNSUPPORTED_IMAGE_EXTENSIONS:
            raise ImageError(name, UNSUPPORTED_FORMAT, f"{ext} is not readable by Pillow") from e
        raise ImageError(name, NOT_AN_IMAGE, "no image format recognised") from e
    except Exception as e:  # plugins raise assorted errors on malformed headers
        raise ImageError(name, CORRUPT, f"{type(e).__name__}: {e}") from e
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(name, CORRUPT, f"invalid size {w}x{h}")
    if w * h > limit:
        raise ImageError(name, DECOMPRESSION_BOMB, f"{w}x{h} = {w * h} pixels > limit {limit}")
    return im


def _load(im: ImageFile.ImageFile, name: str) -> None:
    """Decode all pixel data, so truncation and corrupt streams fail here and not three stages later."""
    _check_truncation_guard()
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, DECOMPRESSION_BOMB, str(e)) from e
    except MemoryError as e:
        raise ImageError(name, DECOMPRESSION_BOMB, "out of memory while decoding") from e
    except OSError as e:
        reason = TRUNCATED if "truncated" in str(e).lower() else CORRUPT
        raise ImageError(name, reason, str(e)) from e
    except Exception as e:  # SyntaxError, ValueError, EOFError, zlib.error, struct.error ...
        raise ImageError(name, CORRUPT, f"{type(e).__name__}: {e}") from e


def _orientation(im: Image.Image, *, allow_load: bool = True) -> int:
    """EXIF orientation (1..8), 1 if absent or unparsable.

    A broken EXIF block is common in the wild and says nothing about the pixels, so it must not drop
    the image. For PNG the eXIf chunk may follow the pixel data; with ``allow_load=False`` such a
    late chunk is ignored rather than paying for a full decode.
    """
    if not allow_load and im.format not in _HEADER_EXIF_FORMATS and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        value = int(value)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _scale_to_uint8(arr: np.ndarray, *, full_scale: float | None) -> np.ndarray:
    """Map a single-channel integer/float array to uint8 without clipping.

    With ``full_scale`` the mapping is ``round(v * 255 / full_scale)`` (a 16-bit image keeps its
    tonality); otherwise the array's own min..max is stretched to 0..255 (data of unknown range).
    """
    import numpy as np

    a = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if full_scale is None:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    else:
        a = a * (255.0 / full_scale)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, *, name: str = "<image>") -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB (returns ``im`` itself when it already is RGB).

    * ``I;16*`` (16-bit grey): scaled by 255/65535. Pillow's own ``convert`` clips at 255, which
      turns most 16-bit images white.
    * ``I`` (32-bit int): treated as 16-bit when its values fit 0..65535 (how 16-bit PNG/TIFF are
      often stored), else min-max stretched. ``F`` (float): 0..1 scaled, else min-max stretched.
    * Anything with transparency (RGBA, LA, PA, La, RGBa, palette or colour-key ``transparency``):
      composited on white, so transparent pixels do not turn into arbitrary (often black) colours.
    * CMYK, YCbCr, HSV, 1-bit, L, P, RGBX: Pillow's conversion; LAB through a LAB->sRGB transform.

    Raises :class:`ImageError` ``unsupported_mode`` for modes none of this applies to.
    """
    mode = im.mode
    try:
        if mode == "RGB":
            return im
        if mode in ("I", "F") or mode.startswith("I;16"):
            import numpy as np
        if mode.startswith("I;16"):
            arr = np.asarray(im).astype(np.uint16, copy=False)
            return Image.fromarray(_scale_to_uint8(arr, full_scale=65535.0)).convert("RGB")
        if mode == "I":
            arr = np.asarray(im)
            full = 65535.0 if arr.size and arr.min() >= 0 and arr.max() <= 65535 else None
            return Image.fromarray(_scale_to_uint8(arr, full_scale=full)).convert("RGB")
        if mode == "F":
            arr = np.asarray(im)
            finite = arr[np.isfinite(arr)]
            unit = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
            return Image.fromarray(_scale_to_uint8(arr, full_scale=1.0 if unit else None)).convert(
                "RGB"
            )
        if mode == "LAB":
            from PIL import ImageCms

            transform = ImageCms.buildTransform(
                ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
            )
            out = ImageCms.applyTransform(im, transform)
            assert out is not None
            return out
        if im.has_transparency_data:
            rgba = im.convert("LA").convert("RGBA") if mode == "La" else im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(name, UNSUPPORTED_MODE, f"mode {mode}: {type(e).__name__}: {e}") from e


def _apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return im if method is None else im.transpose(method)


def decode_image(
    data: bytes, name: str = "<bytes>", *, max_pixels: int | None = None
) -> Image.Image:
    """Decode in-memory file bytes exactly like :func:`load_image` (``name`` is used in errors)."""
    im = _open(data, name, max_pixels)
    _load(im, name)
    orientation = _orientation(im)
    out = to_rgb(im, name=name)
    return _apply_orientation(out, orientation)


def decode_source(data: bytes, name: str = "<bytes>") -> tuple[Image.Image, bool]:
    """:func:`decode_image`, plus whether ``data`` can be sent to a model as it is.

    True for an 8-bit RGB PNG or JPEG without an EXIF rotation: its pixels are exactly the
    decoded image, so the file's own bytes can be sent instead of a re-encoding (no CPU, and for
    JPEG photos far fewer bytes). Anything that :func:`to_rgb` or the orientation would change
    (CMYK, 16-bit, palette, grey, rotated) is False: the model must see the normalised pixels the
    boxes refer to.
    """
    im = _open(data, name, None)
    fmt = im.format
    stored = "transparency" not in im.info and (
        (fmt == "JPEG" and im.mode == "RGB")
        or (fmt == "PNG" and im.mode == "RGB" and data[24:26] == b"\x08\x02")  # IHDR: 8-bit RGB
    )
    _load(im, name)
    orientation = _orientation(im)
    out = to_rgb(im, name=name)
    return _apply_orientation(out, orientation), stored and orientation == 1


def load_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Image.Image:
    """Safely decode an image file to an 8-bit RGB, EXIF-upright, fully loaded :class:`PIL.Image.Image`.

    Safety: the pixel count is checked against the decompression-bomb limit before any pixel is
    decoded (``max_pixels`` can tighten the process-wide limit, see :func:`set_max_pixels`); the whole
    file is decoded here, so truncated files fail here; the file is read once into memory, so no
    file handle outlives the call (multi-frame formats keep theirs open otherwise). Only the first
    frame of animations is used.

    Raises :class:`ImageError` (reason in :data:`REASONS`) for every kind of bad file.
    """
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageError(name, UNREADABLE, f"{type(e).__name__}: {e.strerror or e}") from e
    return decode_image(data, name, max_pixels=max_pixels)


def probe_image(
    data: bytes,
    name: str = "<bytes>",
    *,
    max_pixels: int | None = None,
    min_side: int | None = None,
    jpeg_draft: bool = True,
) -> ImageInfo:
    """Check that bytes decode the way :func:`load_image` would, without building the RGB image.

    Used by the manifest to decide what is kept. It runs the same open / bomb check / full decode /
    mode check as :func:`load_image`, with two shortcuts that do not change the verdict:

    * ``min_side``: if the (oriented) header size is not larger than ``min_side`` on both sides, the
      image is dropped anyway, so stop before decoding (``decoded=False``).
    * ``jpeg_draft``: decode JPEGs with libjpeg's 1/8 DCT scaling. The entropy-coded stream is still
      read and Huffman-decoded to the end (only the inverse DCT and colour conversion shrink), so a
      truncated file fails exactly as with a full decode; measured on 5 MP JPEGs about 2x faster.
      Corrupt-but-complete JPEG data passes either way (libjpeg conceals it).

    The mode check converts a 1x1 crop with :func:`to_rgb`, so "unsupported_mode" is found without
    converting the whole image.
    """
    im = _open(data, name, max_pixels)
    fmt = im.format or "unknown"
    mode = im.mode
    w, h = im.size
    if min_side is not None:
        orientation = _orientation(im, allow_load=False)
        ow, oh = (h, w) if orientation in _SWAPS_AXES else (w, h)
        if not (ow > min_side and oh > min_side):
            return ImageInfo(fmt, mode, ow, oh, orientation, decoded=False)
    if jpeg_draft and fmt in ("JPEG", "MPO"):
        im.draft(im.mode, (1, 1))
    _load(im, name)
    orientation = _orientation(im)
    ow, oh = (h, w) if orientation in _SWAPS_AXES else (w, h)
    to_rgb(im.crop((0, 0, 1, 1)), name=name)
    return ImageInfo(fmt, mode, ow, oh, orientation, decoded=True)


# --------------------------------------------------------------------------------------------------
# Box geometry


def _validate_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"box must have 4 numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box has non-finite coordinates: {box!r}")
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box must satisfy x0 <= x1 and y0 <= y1, got {box!r}")
    return x0, y0, x1, y1


def clamp_box(box: Sequence[float], w: int, h: int) -> IntBox:
    """Snap a box outward to integer pixels and clamp it to a ``w`` x ``h`` image.

    Outward rounding keeps every pixel the segmenter marked. The result can be empty (``x0 == x1``
    or ``y0 == y1``) when the box lies outside the image; callers that crop must check
    (:func:`crop_upscale` raises). Raises ``ValueError`` for malformed boxes.
    """
    x0, y0, x1, y1 = _validate_box(box)
    cx0 = min(max(math.floor(x0), 0), w)
    cy0 = min(max(math.floor(y0), 0), h)
    cx1 = min(max(math.ceil(x1), cx0), w)
    cy1 = min(max(math.ceil(y1), cy0), h)
    return cx0, cy0, cx1, cy1


def box_area_fraction(box: Sequence[float], w: int, h: int) -> float:
    """Area of the box clamped to the image, as a fraction of the image area (0..1).

    Computed on the exact (unrounded) clamped box, so the method's "area >= 10%" rule does not
    depend on rounding.
    """
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    x0, y0, x1, y1 = _validate_box(box)
    cw = max(0.0, min(x1, w) - max(x0, 0.0))
    ch = max(0.0, min(y1, h) - max(y0, 0.0))
    return (cw * ch) / (w * h)


def expand_box(
    box: Sequence[float], frac: float = 0.05, w: int | None = None, h: int | None = None
) -> IntBox:
    """Grow a box by ``frac`` of its own width/height on each side, then clamp to the ``w`` x ``h``
    image (:func:`clamp_box`).

    This is the margin R2I draws the red rectangle on (5%), so the stroke does not cover the
    object. ``w`` and ``h`` are required; they come after ``frac`` only so that calls written
    against the pipeline's interface, ``expand_box(box, frac, w, h)``, read naturally.
    """
    if w is None or h is None:
        raise TypeError("expand_box() needs the image size: expand_box(box, frac, w, h)")
    if frac < 0:
        raise ValueError(f"frac must be >= 0, got {frac}")
    x0, y0, x1, y1 = _validate_box(box)
    dx, dy = (x1 - x0) * frac, (y1 - y0) * frac
    return clamp_box((x0 - dx, y0 - dy, x1 + dx, y1 + dy), w, h)


def _nonempty_box(img: Image.Image, box: Sequence[float]) -> IntBox:
    b = clamp_box(box, img.width, img.height)
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box {tuple(box)!r} is empty inside a {img.width}x{img.height} image")
    return b


# --------------------------------------------------------------------------------------------------
# Pixel operations


def crop_upscale(
    img: Image.Image,
    box: Sequence[float],
    factor: float = 2.0,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    """Crop ``box`` (clamped, see :func:`clamp_box`) and upscale it by ``factor`` with Lanczos.

    This is the micro-crop the teachers see. Raises ``ValueError`` for an empty box.
    """
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    b = _nonempty_box(img, box)
    crop = img.crop(b)
    size = (max(1, round(crop.width * factor)), max(1, round(crop.height * factor)))
    return crop if size == crop.size else crop.resize(size, resample)


def draw_red_box(
    img: Image.Image,
    box: Sequence[float],
    width: int = 5,
    color: tuple[int, int, int] = (255, 0, 0),
) -> Image.Image:
    """Return a copy of ``img`` (as RGB) with a rectangle outline drawn along ``box``.

    The stroke lies **inside** the clamped box: its outer edge is the box edge (columns ``x0`` and
    ``x1-1``, rows ``y0`` and ``y1-1``) and it extends ``width`` pixels inward. Inside, so that a box
    touching the image border still shows all four sides and no pixel outside the box changes; the
    caller expands the box first (:func:`expand_box`, 5%) so the stroke does not cover the object.
    A box thinner than ``2*width`` is filled. Raises ``ValueError`` for an empty box.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = img.convert("RGB") if img.mode != "RGB" else img.copy()
    x0, y0, x1, y1 = _nonempty_box(out, box)
    fill = tuple(int(c) for c in color)
    if len(fill) != 3:
        raise ValueError(f"color must be an (r, g, b) triple, got {color!r}")
    # Four filled bands: exact pixel placement, independent of ImageDraw's outline conventions.
    out.paste(fill, (x0, y0, x1, min(y0 + width, y1)))
    out.paste(fill, (x0, max(y1 - width, y0), x1, y1))
    out.paste(fill, (x0, y0, min(x0 + width, x1), y1))
    out.paste(fill, (max(x1 - width, x0), y0, x1, y1))
    return out


def resize_to_max_pixels(
    img: Image.Image,
    max_pixels: int,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    """Downscale (keeping the aspect ratio) so that ``width*height <= max_pixels``.

    Returns ``img`` itself, not a copy, when it already fits: callers cap every image sent to a model
    and most already fit. Uses ``reducing_gap=3`` (an integer box-reduce before Lanczos), which
    Pillow documents as visually indistinguishable from a plain Lanczos and is several times faster
    for large reductions.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (w * h))
    nw, nh = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    while nw * nh > max_pixels:  # float rounding guard
        if nw >= nh:
            nw -= 1
        else:
            nh -= 1
    return img.resize((nw, nh), resample, reducing_gap=3.0)


# --------------------------------------------------------------------------------------------------
# Encoding


def encode_png(img: Image.Image, compress_level: int = 1) -> bytes:
    """Encode as PNG (lossless: what teachers see must keep every detail of a micro-crop).

    ``compress_level=1`` by default: on 5 MP photos it encodes 1.5-5x faster than Pillow's default
    level 6 for ~10-25% larger files (bench/bench_images.py), and full-size PNG encoding is the most
    expensive step of the per-object image work.
    """
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(img: Image.Image, quality: int = 95, subsampling: int = 0) -> bytes:
    """Encode as baseline JPEG (converted to RGB first if needed).

    ``subsampling=0`` (4:4:4) by default: chroma subsampling halves colour resolution, which blurs
    thin red strokes and the colours of small text and objects, exactly the evidence R2I is about.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def to_data_url(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` URL, the form OpenAI-compatible chat APIs take images in."""
    if "/" not in mime:
        raise ValueError(f"mime must look like 'image/png', got {mime!r}")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
