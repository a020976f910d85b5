"""What every model-backed stage needs at run time.

* :class:`ModelSet` opens each configured endpoint once, shares one client per endpoint between
  the roles that use it, and encodes each image once. With ``lazy=True`` (the synthesis job) an
  endpoint is only reached, and a ``launch`` endpoint only started, when the first call misses
  the cache: a rerun whose calls are all cached starts no server. Requests to a standing
  ``base_url`` endpoint count against a limit shared by every job on the machine
  (:mod:`r2i.client.slots`).
* :class:`OnceMemo` is the thread-safe, single-flight memo behind the image encodings.
* :func:`run_items` processes items concurrently with progress (items done, rate, ETA) in the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

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
from r2i.client.slots import SharedSlots, slot_dir_for
from r2i.images import decode_image, encode_png, resize_to_max_pixels, to_data_url

log = logging.getLogger("r2i.stage")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


_ENDPOINT_FIELDS = {f.name for f in dataclasses.fields(EndpointConfig)}


class _Pending:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class OnceMemo(Generic[K, V]):
    """A bounded, thread-safe memo that computes each key once, even under concurrent misses.

    The first caller of a missing key computes it; callers of the same key that arrive meanwhile
    wait for that result instead of computing it again (encoding a full image six times over was
    most of a stage's CPU). Entries are evicted least-recently-used once their total ``size``
    exceeds ``max_bytes`` or their number ``max_entries``; eviction happens under the lock, so
    two threads can never evict the same entry. A failed computation is not stored: the error
    goes to the callers that waited for it, and the next caller tries again.
    """

    def __init__(self, *, max_entries: int = 256, max_bytes: int = 512 << 20,
                 size: Callable[[V], int] = lambda v: len(v)) -> None:  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._data: OrderedDict[K, V] = OrderedDict()
        self._pending: dict[K, _Pending] = {}
        self._bytes = 0
        self._size = size
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.computed = 0  # how many times a value was computed (tests, logs)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
        assert pending is not None
        if not owner:
            pending.event.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value  # type: ignore[no-any-return]
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                self._pending.pop(key, None)
            pending.error = exc
            pending.event.set()
            raise
        with self._lock:
            self.computed += 1
            self._data[key] = value
            self._bytes += self._size(value)
            while len(self._data) > 1 and (len(self._data) > self.max_entries
                                           or self._bytes > self.max_bytes):
                _, old = self._data.popitem(last=False)
                self._bytes -= self._size(old)
            self._pending.pop(key, None)
        pending.value = value
        pending.event.set()
        return value


@dataclass
class Role:
    name: str
    model: str
    client: ModelClient
    max_image_pixels: int | None = None


class ModelSet:
    """The model roles a job uses, opened together: ``async with ModelSet(...) as models``.

    ``lazy=True`` defers reaching each endpoint to its first cache miss (see the module
    docstring); ``slot_dir`` is where the cross-job request limits of ``base_url`` endpoints
    live (default ``/tmp/r2i-slots-<uid>``; an endpoint with ``shared_limit: false`` opts out).
    ``endpoint_log`` names the log file of a launched endpoint (``{name}`` is replaced by the
    endpoint's name); default: ``<log_dir>/endpoint-<name>.log``.

    ``on_first_request`` runs once, when the job is about to send its first request: as soon
    as a server it launches starts loading (minutes of a model loading on its GPUs, which other
    set-up can overlap), or once a ``base_url`` endpoint has passed its health check (the
    request goes out next). The synthesis job starts building its segmenter then, so that
    building it does not hold up the first request (:class:`r2i.segment.BackgroundSegmenter`).
    """

    def __init__(
        self,
        roles: Mapping[str, Mapping[str, Any]],
        cache_dir: str | Path,
        log_dir: str | Path | None = None,
        *,
        lazy: bool = False,
        slot_dir: str | Path | None = None,
        endpoint_log: str | None = None,
        on_first_request: Callable[[], None] | None = None,
    ) -> None:
        self._specs = dict(roles)
        self._on_first_request = on_first_request
        self._cache = CallCache(cache_dir)
        self._log_dir = Path(log_dir) if log_dir else None
        self._endpoint_log = endpoint_log
        self._lazy = lazy
        self._slot_dir = slot_dir
        self.stats = ClientStats()
        self.roles: dict[str, Role] = {}
        self._stack = AsyncExitStack()
        self._clients: dict[str, ModelClient] = {}
        self._urls: OnceMemo[tuple[str, int | None], str] = OnceMemo()
        self._url_tasks: dict[tuple[str, int | None], asyncio.Future[str]] = {}
        self.endpoints_started: list[str] = []

    def _log_path(self, name: str) -> Path | None:
        if self._endpoint_log:
            return Path(self._endpoint_log.replace("{name}", name))
        return endpoint_log_path(self._log_dir, name) if self._log_dir else None

    def _first_request(self) -> None:
        callback, self._on_first_request = self._on_first_request, None
        if callback is not None:
            callback()

    async def _open(self, cfg: EndpointConfig) -> str:
        """Enter the endpoint's context (launch / health check) for the rest of the job."""
        if cfg.base_url is None:
            self._first_request()  # a launch: the server loads for a while
        base = await self._stack.enter_async_context(open_endpoint(cfg, log_path=self._log_path(cfg.name)))
        self.endpoints_started.append(cfg.name)
        self._first_request()
        return base

    async def __aenter__(self) -> ModelSet:
        try:
            for role, spec in self._specs.items():
                raw = spec["endpoint_config"]
                # Keys that only the workflow uses (e.g. the GPUs a launched server needs).
                ep = {k: v for k, v in raw.items() if k in _ENDPOINT_FIELDS}
                name = ep["name"]
                if name not in self._clients:
                    cfg = EndpointConfig(**ep)
                    slots = None
                    if cfg.base_url is not None and raw.get("shared_limit", True):
                        slots = SharedSlots(slot_dir_for(self._slot_dir, cfg.base_url),
                                            cfg.max_concurrency, label=f"endpoint {name!r}")
                    if self._lazy:  # base_url ones too: their health check waits for a miss
                        client = ModelClient(cfg, base_url=None, cache=self._cache,
                                             stats=self.stats,
                                             resolve_url=lambda c=cfg: self._open(c),
                                             shared_slots=slots)
                    else:
                        base_url = await self._open(cfg)
                        client = ModelClient(cfg, base_url=base_url, cache=self._cache,
                                             stats=self.stats, shared_slots=slots)
                    self._stack.push_async_callback(client.aclose)
                    self._clients[name] = client
                self.roles[role] = Role(role, spec["model"], self._clients[name],
                                        spec.get("max_image_pixels"))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        started = ", ".join(self.endpoints_started) or "none (every call was cached)"
        log.info("model calls: %s; endpoints started: %s", self.stats.summary(), started)
        # Close the clients (their keep-alive connections) before stopping launched servers,
        # which would otherwise wait for those connections during their graceful shutdown.
        for client in self._clients.values():
            await client.aclose()
        await self._stack.aclose()

    def image_url(self, image: Image.Image | bytes, key: str, max_pixels: int | None) -> str:
        """Data URL of ``image`` (downscaled to ``max_pixels``), memoised by ``key``.

        Thread-safe, and each ``(key, max_pixels)`` is encoded once however many threads ask
        for it at the same time. Encoded bytes (a stored crop or boxed image, a source file) are
        sent as they are when they fit the pixel budget: no decode and re-encode per request.
        """
        return self._urls.get((key, max_pixels), lambda: _data_url(image, key, max_pixels))

    async def image_url_async(self, image: Image.Image | bytes, key: str,
                              max_pixels: int | None) -> str:
        """:meth:`image_url` from the event loop: one thread per distinct image, not per call."""
        k = (key, max_pixels)
        task = self._url_tasks.get(k)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.ensure_future(asyncio.to_thread(self.image_url, image, key, max_pixels))
            self._url_tasks[k] = task
            if len(self._url_tasks) > 4 * self._urls.max_entries:
                for old in [x for x, t in self._url_tasks.items() if t.done()][: len(self._url_tasks) // 2]:
                    del self._url_tasks[old]
        return await asyncio.shield(task)

    def pending_requests(self) -> int:
        """Calls admitted by the clients but not finished (a measure of queued work)."""
        return sum(c.pending for c in self._clients.values())

    def total_concurrency(self) -> int:
        return sum(c.cfg.max_concurrency for c in self._clients.values())

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
            url = await self.image_url_async(img, key, r.max_image_pixels)
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


def _data_url(image: Image.Image | bytes, key: str, max_pixels: int | None) -> str:
    if isinstance(image, bytes):
        mime = _mime(image)
        if mime and (max_pixels is None or _pixels(image) <= max_pixels):
            return to_data_url(image, mime)
        image = decode_image(image, key)
    img = resize_to_max_pixels(image, max_pixels) if max_pixels else image
    return to_data_url(encode_png(img, compress_level=1), "image/png")


def _mime(data: bytes) -> str | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return None


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
