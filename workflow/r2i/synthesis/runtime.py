"""What every model-backed stage needs at run time.

* :class:`ModelSet` opens each configured endpoint once (launching a server when the config says
  so), shares one client per endpoint between the roles that use it, and encodes images once.
* :func:`run_items` processes items concurrently with progress (items done, rate, ETA) in the log.
* :func:`stage_main` is the common body of a stage script: run, collect rows, record stats, and
  fail at the end (never in the middle) if some items hit a persistent model error, so that
  finished items stay in the call cache and a rerun only redoes the failed ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from r2i.client import (
    CallCache,
    ChatResult,
    ClientStats,
    EndpointConfig,
    ModelCallError,
    ModelClient,
    open_endpoint,
)
from r2i.client.endpoint import endpoint_log_path
from r2i.images import decode_image, encode_png, resize_to_max_pixels, to_data_url

log = logging.getLogger("r2i.stage")

T = TypeVar("T")


_ENDPOINT_FIELDS = {f.name for f in dataclasses.fields(EndpointConfig)}


@dataclass
class Role:
    name: str
    model: str
    client: ModelClient
    max_image_pixels: int | None = None


class ModelSet:
    """The model roles a stage uses, opened together: ``async with ModelSet(...) as models``."""

    def __init__(
        self,
        roles: Mapping[str, Mapping[str, Any]],
        cache_dir: str | Path,
        log_dir: str | Path | None = None,
    ) -> None:
        self._specs = dict(roles)
        self._cache = CallCache(cache_dir)
        self._log_dir = Path(log_dir) if log_dir else None
        self.stats = ClientStats()
        self.roles: dict[str, Role] = {}
        self._stack = AsyncExitStack()
        self._url_cache: dict[tuple[str, int | None], str] = {}

    async def __aenter__(self) -> ModelSet:
        clients: dict[str, ModelClient] = {}
        try:
            for role, spec in self._specs.items():
                # Keys that only the workflow uses (e.g. the GPUs a launched server needs).
                ep = {k: v for k, v in spec["endpoint_config"].items() if k in _ENDPOINT_FIELDS}
                name = ep["name"]
                if name not in clients:
                    cfg = EndpointConfig(**ep)
                    log_path = endpoint_log_path(self._log_dir, name) if self._log_dir else None
                    base_url = await self._stack.enter_async_context(
                        open_endpoint(cfg, log_path=log_path)
                    )
                    client = ModelClient(cfg, base_url=base_url, cache=self._cache, stats=self.stats)
                    self._stack.push_async_callback(client.aclose)
                    clients[name] = client
                self.roles[role] = Role(role, spec["model"], clients[name], spec.get("max_image_pixels"))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        log.info("model calls: %s", self.stats.summary())
        await self._stack.aclose()

    def image_url(self, image: Image.Image | bytes, key: str, max_pixels: int | None) -> str:
        """Data URL of ``image`` (downscaled to ``max_pixels``), memoised by ``key``.

        Encoded bytes (a stored crop or boxed image) are sent as they are when they fit the pixel
        budget: no decode and re-encode per request.
        """
        k = (key, max_pixels)
        url = self._url_cache.get(k)
        if url is None:
            if isinstance(image, bytes):
                mime = "image/png" if image[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
                if max_pixels is None or _pixels(image) <= max_pixels:
                    url = to_data_url(image, mime)
                else:
                    image = decode_image(image, key)
            if url is None:
                img = resize_to_max_pixels(image, max_pixels) if max_pixels else image
                url = to_data_url(encode_png(img, compress_level=1), "image/png")
            if len(self._url_cache) > 64:
                self._url_cache.pop(next(iter(self._url_cache)))
            self._url_cache[k] = url
        return url

    async def chat(
        self,
        role: str,
        text: str,
        images: Sequence[tuple[str, Image.Image | bytes]] = (),
        *,
        n: int = 1,
        seed: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int = 1024,
    ) -> ChatResult:
        """One chat call for ``role``; ``images`` are ``(cache_key, image)`` pairs shown first."""
        r = self.roles[role]
        content: list[dict[str, Any]] = []
        for key, img in images:
            url = await asyncio.to_thread(self.image_url, img, key, r.max_image_pixels)
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        return await r.client.chat(
            model=r.model,
            messages=messages,
            n=n,
            seed=seed,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
        )

    def model_name(self, role: str) -> str:
        return self.roles[role].model


def _pixels(data: bytes) -> int:
    """Pixel count from the image header (no decode)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.width * im.height


class Progress:
    """Log items done, rate and ETA at most every ``every_s`` seconds (and at the end)."""

    def __init__(self, label: str, total: int, every_s: float = 10.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.done = 0
        self.start = self._last = time.monotonic()

    def step(self, k: int = 1) -> None:
        self.done += k
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            elapsed = max(now - self.start, 1e-9)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info(
                "%s: %d/%d items (%.1f%%), %.2f items/s, ETA %.0f s",
                self.label, self.done, self.total, 100.0 * self.done / max(self.total, 1), rate, eta,
            )  # fmt: skip


async def run_items(
    items: Sequence[T],
    worker: Callable[[T], Awaitable[list[Any]]],
    *,
    concurrency: int,
    label: str,
    on_error: Callable[[T, BaseException], list[Any]],
) -> list[Any]:
    """Run ``worker`` over ``items`` with at most ``concurrency`` in flight; flatten the results.

    A :class:`ModelCallError` for one item is turned into rows by ``on_error`` and does not stop
    the others.
    """
    sem = asyncio.Semaphore(max(1, concurrency))
    progress = Progress(label, len(items))
    results: list[Any] = []

    async def one(item: T) -> None:
        async with sem:
            try:
                rows = await worker(item)
            except ModelCallError as err:
                rows = on_error(item, err)
            results.extend(rows)
            progress.step()

    await asyncio.gather(*(one(it) for it in items))
    return results


def stable_seed(*parts: object) -> int:
    """A 31-bit seed derived from the parts (used for shuffles and example sampling)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def chunked(seq: Iterable[T], size: int) -> list[list[T]]:
    out: list[list[T]] = []
    for item in seq:
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].append(item)
    return out
