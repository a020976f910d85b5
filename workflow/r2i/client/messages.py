"""Building chat messages (text + images) and deterministic seeds.

Images travel inline as base64 ``data:`` URLs, the one image transport that every
OpenAI-compatible server (vLLM, hosted APIs, the simulator) accepts without shared storage.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from typing import Any, Union

from PIL import Image

__all__ = ["ImageLike", "image_data_url", "seed_for", "summarize_messages", "user_message"]

ImageLike = Union[Image.Image, bytes, bytearray, str, "os.PathLike[str]"]

_FMT_MIME = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
_MAGIC_MIME = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _sniff_mime(data: bytes) -> str | None:
    for magic, mime in _MAGIC_MIME:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _mime_for_format(fmt: str) -> str:
    try:
        return _FMT_MIME[fmt.upper()]
    except KeyError:
        raise ValueError(f"unsupported image format {fmt!r}; use one of {sorted(_FMT_MIME)}") from None


def image_data_url(img: ImageLike, fmt: str = "PNG") -> str:
    """Encode an image as a ``data:<mime>;base64,...`` URL.

    ``img`` may be a PIL image (encoded with ``fmt``; PNG by default because it is lossless, so
    the model sees exactly the pixels the pipeline hashed), already-encoded bytes, a path to an
    image file (bytes are sent as stored, mime type sniffed from the content), or an existing
    ``data:`` URL (returned unchanged).
    """
    if isinstance(img, Image.Image):
        pil_fmt = "JPEG" if fmt.upper() == "JPG" else fmt.upper()
        mime = _mime_for_format(pil_fmt)
        if pil_fmt == "JPEG" and img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=pil_fmt)
        data = buf.getvalue()
    elif isinstance(img, bytes | bytearray):
        data = bytes(img)
        mime = _sniff_mime(data) or _mime_for_format(fmt)
    elif isinstance(img, str) and img.startswith("data:"):
        return img
    elif isinstance(img, str | os.PathLike):
        with open(img, "rb") as fh:
            data = fh.read()
        mime = _sniff_mime(data) or _mime_for_format(fmt)
    else:
        raise TypeError(f"image must be a PIL image, bytes or a path, not {type(img).__name__}")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def user_message(text: str, images: Iterable[ImageLike] | None = None) -> dict[str, Any]:
    """Build an OpenAI ``user`` message: image parts first, then the text part.

    Images first matches how the VLMs used here were trained (image tokens, then the question).
    """
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images or ()
    ]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def seed_for(*parts: object) -> int:
    """Deterministic 31-bit seed from e.g. ``(item_id, purpose)``.

    A seed derived from the item (not from run order) keeps sampling reproducible when jobs are
    re-partitioned, and keeps the request, hence its cache key, stable across reruns.
    """
    if not parts:
        raise ValueError("seed_for needs at least one part")
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def _summarize_part(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        if isinstance(url, str) and url.startswith("data:"):
            head, _, payload = url.partition(",")
            return {
                "type": "image_url",
                "mime": head[5:].split(";")[0],
                "sha256": hashlib.sha256(payload.encode("ascii", "replace")).hexdigest(),
                "b64_chars": len(payload),
            }
        return {"type": "image_url", "url": url}
    return part


def summarize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy of ``messages`` with inline image bytes replaced by their hash and size.

    Stored in cache records so a record is human-inspectable and small, yet still identifies
    which image was asked about.
    """
    out: list[dict[str, Any]] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            msg = {**msg, "content": [_summarize_part(p) for p in content]}
        out.append(msg)
    return out
