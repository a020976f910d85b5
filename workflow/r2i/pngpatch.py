"""PNG encoding of one full image and many boxed copies of it, re-encoding only what changed.

The MCQ stage draws a red box on the full image once per question and sends (and stores) the
result losslessly. Encoding a 6-12 MP image as PNG costs 0.2-0.5 s of CPU (Pillow: adaptive row
filters + zlib), and one source image has dozens of questions, so the same unchanged pixels were
compressed again and again; that was most of the synthesis CPU.

:class:`BandedPNG` encodes the image once, in bands of ``band_rows`` rows, each band compressed
by a fresh raw-deflate stream that ends byte-aligned (``Z_SYNC_FLUSH``). Concatenated, such
streams are one valid deflate stream (no band refers back into another), so every band is also
its own ``IDAT`` chunk with its own CRC. :meth:`BandedPNG.with_box` then only re-filters and
re-compresses the bands a rectangle outline touches (about the box's height, a few per cent of
the image), reuses every other chunk as stored bytes, and combines the per-band Adler-32
checksums arithmetically, so a boxed copy costs a small fraction of a full encode.

The output is an ordinary 8-bit RGB PNG that any decoder reads; pixels equal those of
:func:`r2i.images.draw_red_box` on the same image (tested). Row filter: ``Up`` (type 2) for every
row, computed with numpy: about as small as Pillow's adaptive filters at zlib level 1 on the toy
scenes, at a fraction of the CPU (``bench/bench_images.py``). A band's first row is filtered
against the last row of the band above, so a change in a band's last row also re-encodes the
band below.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # imported where used, so importing the synthesis stages stays cheap
    import numpy as np

__all__ = ["BandedPNG", "adler32_combine"]

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_MOD_ADLER = 65521


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of ``A + B`` from ``adler32(A)``, ``adler32(B)`` and ``len(B)`` (zlib's formula)."""
    rem = len2 % _MOD_ADLER
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _MOD_ADLER
    sum1 += (adler2 & 0xFFFF) + _MOD_ADLER - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _MOD_ADLER - rem
    if sum1 >= _MOD_ADLER:
        sum1 -= _MOD_ADLER
    if sum1 >= _MOD_ADLER:
        sum1 -= _MOD_ADLER
    if sum2 >= (_MOD_ADLER << 1):
        sum2 -= _MOD_ADLER << 1
    if sum2 >= _MOD_ADLER:
        sum2 -= _MOD_ADLER
    return (sum2 << 16) | sum1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _filter_up(rows: np.ndarray, prev: np.ndarray | None) -> bytes:
    """PNG ``Up`` filter of ``rows`` (h, w, 3 uint8): each byte minus the byte above it.

    ``prev`` is the row just above ``rows`` (``None`` for the first row of the image).
    """
    import numpy as np

    h, w, _ = rows.shape
    flat = rows.reshape(h, w * 3)
    out = np.empty((h, w * 3 + 1), dtype=np.uint8)
    out[:, 0] = 2  # filter type Up
    above = prev.reshape(1, w * 3) if prev is not None else np.zeros((1, w * 3), np.uint8)
    np.subtract(flat[:1], above, out=out[:1, 1:], dtype=np.uint8, casting="unsafe")
    np.subtract(flat[1:], flat[:-1], out=out[1:, 1:], dtype=np.uint8, casting="unsafe")
    return out.tobytes()


@dataclass(frozen=True)
class _Band:
    chunk: bytes  # the complete IDAT chunk (length, type, data, CRC)
    adler: int  # Adler-32 of the band's filtered bytes
    length: int  # number of filtered bytes


class BandedPNG:
    """An RGB image encoded once in bands; cheap PNGs of it with a rectangle drawn on it."""

    def __init__(self, image: Image.Image, *, band_rows: int = 32, level: int = 3) -> None:
        if image.mode != "RGB":
            image = image.convert("RGB")
        self.width, self.height = image.size
        self.band_rows = max(1, int(band_rows))
        self.level = level
        import numpy as np

        self._pixels = np.asarray(image, dtype=np.uint8)
        self._header = _PNG_SIG + _chunk(
            b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        )
        # zlib stream header (CMF/FLG for a 32 KiB window); its own IDAT chunk
        self._zhead = _chunk(b"IDAT", b"\x78\x01")
        px, br = self._pixels, self.band_rows
        self._bands = [self._encode_band(px[y0:y0 + br], px[y0 - 1] if y0 else None)
                       for y0 in range(0, self.height, br)]

    def _encode_band(self, rows: np.ndarray, prev: np.ndarray | None) -> _Band:
        raw = _filter_up(rows, prev)
        comp = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        data = comp.compress(raw) + comp.flush(zlib.Z_SYNC_FLUSH)
        return _Band(_chunk(b"IDAT", data), zlib.adler32(raw), len(raw))

    def _assemble(self, bands: Sequence[_Band]) -> bytes:
        adler = 1
        for b in bands:
            adler = adler32_combine(adler, b.adler, b.length)
        final = _chunk(b"IDAT", b"\x03\x00" + struct.pack(">I", adler))  # empty final block
        return b"".join([self._header, self._zhead, *(b.chunk for b in bands), final,
                         _chunk(b"IEND", b"")])

    def encode(self) -> bytes:
        """The image itself as PNG bytes."""
        return self._assemble(self._bands)

    def with_box(self, box: Sequence[float], *, width: int = 5,
                 color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
        """PNG bytes of the image with a rectangle outline drawn along ``box``.

        Exactly the pixels of :func:`r2i.images.draw_red_box` (the stroke lies inside the clamped
        box and extends ``width`` px inwards); only the bands the box spans are re-encoded.
        """
        import numpy as np

        from r2i.images import clamp_box

        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        x0, y0, x1, y1 = clamp_box(box, self.width, self.height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {tuple(box)!r} is empty inside a {self.width}x{self.height} image")
        br = self.band_rows
        first = y0 // br
        last = min((y1 - 1) // br + 1, len(self._bands) - 1)  # + the band below (Up filter)
        top = first * br
        patch = self._pixels[top:min(self.height, (last + 1) * br)].copy()
        c = np.asarray(tuple(int(v) for v in color), dtype=np.uint8)
        if c.shape != (3,):
            raise ValueError(f"color must be an (r, g, b) triple, got {color!r}")
        a, b = y0 - top, y1 - top  # half-open rows of the box inside the patch
        patch[a:min(a + width, b), x0:x1] = c
        patch[max(b - width, a):b, x0:x1] = c
        patch[a:b, x0:min(x0 + width, x1)] = c
        patch[a:b, max(x1 - width, x0):x1] = c
        bands = list(self._bands)
        for k in range(first, last + 1):
            lo = (k - first) * br
            prev = patch[lo - 1] if lo else (self._pixels[top - 1] if top else None)
            bands[k] = self._encode_band(patch[lo:lo + br], prev)
        return self._assemble(bands)
