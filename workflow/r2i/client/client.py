"""Async client for OpenAI-compatible ``/v1/chat/completions`` endpoints.

One :class:`ModelClient` per endpoint (and event loop). It owns one ``aiohttp`` session (so TCP
connections are reused) and an ``asyncio.Semaphore`` of ``max_concurrency`` (so a pipeline can
``gather`` ten thousand calls without overloading a server), consults the
:class:`~r2i.client.CallCache` before sending anything, sends identical concurrent calls once, and
retries transient failures with exponential backoff and full jitter. A call keeps its request slot
while it backs off, so a struggling server sees less load, not the same load sooner.

What is retried: HTTP 429 and 408, any 5xx, timeouts, connection errors, and malformed bodies
(not JSON, truncated, missing ``choices``/``message.content``, fewer choices than ``n``): all are
things a healthy server under load (vLLM restarts, proxies, rate limits) really produces. Other
4xx mean the request itself is wrong, so retrying would only burn quota: they fail at once.

Credentials: the API key is read from the environment variable named by ``api_key_env`` for every
call (so rotated keys are picked up), is sent only in the ``Authorization`` header, and is never
stored, logged or put into an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cache import CallCache, cache_key_from_json, canonical_json
from .config import EndpointConfig, normalize_base_url
from .errors import ModelCallError, api_key_from_env, redact, redacted_excerpt
from .messages import seed_for, summarize_messages
from .slots import SharedSlots
from .stats import ClientStats, StatsSink

if TYPE_CHECKING:  # aiohttp is imported on the first request (see _aiohttp)
    import aiohttp

__all__ = ["ChatResult", "ModelClient"]


def _aiohttp() -> Any:
    """aiohttp, imported on first use: importing it creates TLS contexts (~0.3 s of CPU per
    process), which a job whose calls all come from the cache never needs."""
    import aiohttp

    return aiohttp

log = logging.getLogger("r2i.client")


@dataclass(frozen=True)
class ChatResult:
    """Outcome of one :meth:`ModelClient.chat` call.

    ``cached`` is true when every sample came from the cache (nothing was sent). ``latency_s`` is
    the wall time of the original request including retries (for cached results: as recorded).
    ``attempts`` counts HTTP requests made for this result *in this process* (0 when cached).
    ``key`` is the cache key of the logical call.
    """

    texts: list[str]
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    key: str
    model: str


class _Malformed(Exception):
    """A 200 response whose body is not a usable chat completion."""


def _tool_calls_text(calls: Any) -> str:
    """Structured OpenAI ``message.tool_calls`` as Hermes/Qwen ``<tool_call>`` text blocks.

    A server with a tool parser (vLLM ``--enable-auto-tool-choice``) moves the calls out of the
    content; the client returns (and caches) text only, so they are written back in the form the
    model emitted them, where :func:`r2i.evaluation.zoomtool.parse_tool_calls` reads them. A call
    whose ``arguments`` string is not JSON is kept as the raw string.
    """
    if not isinstance(calls, list):
        return ""
    blocks: list[str] = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args: Any = fn.get("arguments", {})
        if isinstance(args, str):
            with contextlib.suppress(ValueError):
                args = json.loads(args) if args.strip() else {}
        blocks.append("\n<tool_call>\n" + json.dumps({"name": fn["name"], "arguments": args})
                      + "\n</tool_call>")
    return "".join(blocks)


def _parse_completion(raw: bytes, n: int) -> tuple[list[str], dict[str, int], str | None]:
    """Extract ``n`` texts, usage and model name from a chat.completion body, or raise."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Malformed(f"body is not valid JSON ({len(raw)} bytes)") from None
    if not isinstance(obj, dict):
        raise _Malformed("body is not a JSON object")
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Malformed("body has no 'choices'")
    if len(choices) < n:
        raise _Malformed(f"expected {n} choices, got {len(choices)}")
    if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])
    texts: list[str] = []
    for c in choices[:n]:
        msg = c.get("message") if isinstance(c, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        calls = _tool_calls_text(msg.get("tool_calls")) if isinstance(msg, dict) else ""
        if calls and isinstance(content, str) and "<tool_call>" in content:
            calls = ""  # the server left the calls in the content as well
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise _Malformed("choice without string 'message.content'")
        texts.append(content + calls)
    usage_raw = obj.get("usage")
    usage: dict[str, int] = {}
    if isinstance(usage_raw, dict):
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            v = usage_raw.get(k)
            if isinstance(v, int):
                usage[k] = v
    model = obj.get("model")
    return texts, usage, model if isinstance(model, str) else None


def _retry_after_s(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_CORE_FIELDS = frozenset(
    {"model", "messages", "n", "seed", "temperature", "top_p", "max_tokens"}
)


@dataclass(frozen=True)
class _Request:
    """One logical request with its messages serialised once (canonical JSON)."""

    model: str
    messages: list[Any]
    messages_json: bytes
    n: int
    seed: int | None
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    extra: dict[str, Any] | None

    def key(self) -> str:
        return cache_key_from_json(
            model=self.model, messages_json=self.messages_json, n=self.n, seed=self.seed,
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
            extra=self.extra,
        )

    def with_sample(self, seed: int) -> _Request:
        return _Request(self.model, self.messages, self.messages_json, 1, seed,
                        self.temperature, self.top_p, self.max_tokens, self.extra)

    def body(self) -> bytes:
        """The POST body: the other fields dumped normally, the messages bytes spliced in."""
        rest: dict[str, Any] = {"model": self.model, "n": self.n}
        if self.seed is not None:
            rest["seed"] = self.seed
        if self.temperature is not None:
            rest["temperature"] = self.temperature
        if self.top_p is not None:
            rest["top_p"] = self.top_p
        if self.max_tokens is not None:
            rest["max_tokens"] = self.max_tokens
        if self.extra:
            rest.update(self.extra)
        head = json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return b'{"messages":' + self.messages_json + b"," + head[1:]


def _replace_seed(req: _Request, seed: int | None) -> _Request:
    return _Request(req.model, req.messages, req.messages_json, req.n, seed, req.temperature,
                    req.top_p, req.max_tokens, req.extra)


class _GateToken:
    """One call's admission to the preparation stage; released at most once."""

    __slots__ = ("_gate", "_held")

    def __init__(self, gate: asyncio.Semaphore) -> None:
        self._gate = gate
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate.release()


class ModelClient:
    """Client for one endpoint; see the module docstring for the retry and key policy.

    ``base_url`` overrides ``cfg.base_url`` (it is what :func:`open_endpoint` yields, needed for
    launched endpoints). Instead of a URL, ``resolve_url`` may be given: an async function called
    once, on the first call that is not answered from the cache, that returns the URL (e.g. by
    launching the server). A job whose calls are all cached therefore starts no server.
    ``cache`` is optional; without it every call is sent. ``stats`` may be shared between
    clients; calls are also counted in the :class:`~r2i.client.stats.StatsSink` of the calling
    task (per-stage figures). ``shared_slots`` bounds requests in flight across processes (see
    :mod:`r2i.client.slots`). ``trust_env`` lets aiohttp use ``HTTP(S)_PROXY`` variables (off by
    default so loopback servers are never routed through a cluster proxy).
    """

    def __init__(
        self,
        cfg: EndpointConfig,
        base_url: str | None = None,
        cache: CallCache | None = None,
        stats: ClientStats | None = None,
        *,
        resolve_url: Callable[[], Awaitable[str]] | None = None,
        shared_slots: SharedSlots | None = None,
        trust_env: bool = False,
    ) -> None:
        base = base_url if base_url is not None or resolve_url is not None else cfg.base_url
        if base is None and resolve_url is None:
            raise ValueError(
                f"endpoint {cfg.name!r} is launched: pass the base_url yielded by open_endpoint"
                " (or a resolve_url function)"
            )
        self.cfg = cfg
        self.base_url: str | None = normalize_base_url(base) if base is not None else None
        self._resolve_url = resolve_url
        self._url_lock: asyncio.Lock | None = None
        self._url_error: BaseException | None = None
        self.cache = cache
        self.stats = stats if stats is not None else ClientStats()
        self._sink = StatsSink(self)
        self._url = f"{self.base_url}/v1/chat/completions" if self.base_url else ""
        self._slots = shared_slots
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._gate: asyncio.Semaphore | None = None
        self._closed = False
        self._timeout: aiohttp.ClientTimeout | None = None
        # key -> (future followers wait on, the leader's task)
        self._inflight: dict[str, tuple[asyncio.Future[ChatResult], asyncio.Task[Any]]] = {}
        # Jitter only; it need not be reproducible (results do not depend on it).
        self._rng = random.Random()
        #: chat() calls entered and not yet returned (waiting, in flight or backing off)
        self.pending = 0

    @property
    def started(self) -> bool:
        """Whether the endpoint's URL is known (for a lazily launched one: it was started)."""
        return self.base_url is not None

    async def _ensure_url(self) -> str:
        """The chat URL; resolves (launches) the endpoint on first use, once."""
        if self._url:
            return self._url
        if self._url_error is not None:
            raise self._url_error
        if self._url_lock is None:
            self._url_lock = asyncio.Lock()
        async with self._url_lock:
            if not self._url:
                if self._url_error is not None:
                    raise self._url_error
                assert self._resolve_url is not None
                try:
                    base = await self._resolve_url()
                except Exception as exc:
                    self._url_error = exc
                    raise
                self.base_url = normalize_base_url(base)
                self._url = f"{self.base_url}/v1/chat/completions"
        return self._url

    def __repr__(self) -> str:
        return (
            f"ModelClient(endpoint={self.cfg.name!r}, base_url={self.base_url!r}, "
            f"max_concurrency={self.cfg.max_concurrency}, cache={self.cache!r})"
        )

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel calls still in flight and close the HTTP session (the client is then done)."""
        self._closed = True
        current = asyncio.current_task()
        for fut, task in list(self._inflight.values()):
            fut.cancel()
            if task is not current:
                task.cancel()
        self._inflight.clear()
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        if self._slots is not None:
            self._slots.close()

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session must be created inside the running event loop.
        if self._session is None or self._session.closed:
            aiohttp = _aiohttp()
            self._timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            connector = aiohttp.TCPConnector(
                limit=self.cfg.max_concurrency, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                trust_env=self._trust_env,
            )
        return self._session

    def _get_gate(self) -> asyncio.Semaphore:
        if self._gate is None:
            c = self.cfg.max_concurrency
            self._gate = asyncio.Semaphore(c + max(4, c // 8))
        return self._gate

    def _get_sem(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.cfg.max_concurrency)
        return self._sem

    # -- public API ------------------------------------------------------------------------
    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        n: int = 1,
        seed: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        """Return ``n`` completions for ``messages``, from the cache when already completed.

        ``extra`` holds further body fields (e.g. ``stop``, ``response_format``); it is part of
        the cache key. Raises :class:`ModelCallError` when the call fails for good.
        """
        # Admission gate: only a few calls beyond max_concurrency are prepared (key, cache
        # lookup) but not yet sending. Without it, gathering thousands of calls makes each of
        # them do its preparation before the first responses can be handled, and the first wave
        # of requests goes out late. The token is released once the call holds a request slot,
        # so slow cache writes or waiting for a duplicate never block other calls' admission.
        if self._closed:
            raise RuntimeError(f"ModelClient for endpoint {self.cfg.name!r} is closed")
        self.pending += 1
        try:
            gate = self._get_gate()
            await gate.acquire()
            token = _GateToken(gate)
            try:
                return await self._chat(model, messages, n, seed, temperature, top_p,
                                        max_tokens, extra, token)
            finally:
                token.release()
        finally:
            self.pending -= 1

    async def _chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        n: int,
        seed: int | None,
        temperature: float | None,
        top_p: float | None,
        max_tokens: int | None,
        extra: Mapping[str, Any] | None,
        token: _GateToken,
    ) -> ChatResult:
        if n < 1:
            raise ValueError("n must be >= 1")
        ext = dict(extra) if extra else None
        if ext:
            clash = _CORE_FIELDS.intersection(ext)
            if clash:
                raise ValueError(f"extra must not override core request fields {sorted(clash)}")
        self._sink.add(calls=1)
        # Serialised once: the same bytes feed the cache key and the request body, which matters
        # when messages carry megabytes of inline images.
        msgs = messages if isinstance(messages, list) else list(messages)
        msgs_json = canonical_json(msgs)
        req = _Request(model, msgs, msgs_json, n, seed, temperature, top_p, max_tokens, ext)
        try:
            if n == 1 or self.cfg.supports_n:
                return await self._chat_one(req, token)
            # The server cannot sample n at once: n single-sample calls with consecutive seeds,
            # each cached individually (so a partial run keeps the finished samples).
            if seed is None:
                seed = seed_for(req.key())
            parts = await asyncio.gather(
                *(self._chat_one(req.with_sample(seed + i), token) for i in range(n))
            )
        except ModelCallError as exc:
            self._sink.add(errors=1)
            self._sink.reason("errors_by_reason", exc.reason.split(":", 1)[0])
            raise
        return ChatResult(
            texts=[t for p in parts for t in p.texts],
            cached=all(p.cached for p in parts),
            prompt_tokens=sum(p.prompt_tokens for p in parts),
            completion_tokens=sum(p.completion_tokens for p in parts),
            latency_s=max(p.latency_s for p in parts),
            attempts=sum(p.attempts for p in parts),
            key=_replace_seed(req, seed).key(),
            model=parts[0].model,
        )

    # -- internals -------------------------------------------------------------------------
    async def _chat_one(self, req: _Request, token: _GateToken) -> ChatResult:
        """One request-shaped call, de-duplicated against identical calls in flight.

        The first caller of a key (the leader) does the work in its own task, so a batch of
        ``gather``-ed calls starts sending during the first pass of the event loop rather than
        after every call has been scheduled. Identical calls arriving meanwhile wait for the
        leader's result; if the leader is cancelled, one of them takes over.
        """
        key = req.key()
        while True:
            entry = self._inflight.get(key)
            if entry is None:
                break
            fut = entry[0]
            self._sink.add(dedup_hits=1)
            token.release()
            try:
                # shield: a cancelled follower must not cancel the leader's shared future.
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                cancelling = getattr(task, "cancelling", lambda: 0)()
                if fut.cancelled() and not cancelling and not self._closed:
                    self._sink.add(dedup_hits=-1)
                    continue  # the leader was cancelled, not us: become the leader
                raise
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        task = asyncio.current_task()
        assert task is not None
        self._inflight[key] = (fut, task)
        try:
            result = await self._resolve(key, req, token)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: there may be no followers
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            if self._inflight.get(key, (None,))[0] is fut:
                del self._inflight[key]

    async def _resolve(self, key: str, req: _Request, token: _GateToken) -> ChatResult:
        if self.cache is not None:
            rec = await self.cache.aget(key)
            if rec is not None and len(rec["texts"]) == req.n:
                usage = rec.get("usage") or {}
                self._sink.add(
                    cache_hits=1,
                    cached_prompt_tokens=int(usage.get("prompt_tokens", 0) or 0),
                    cached_completion_tokens=int(usage.get("completion_tokens", 0) or 0),
                    cached_latency_s=float(rec.get("latency_s", 0.0)),
                )
                return ChatResult(
                    texts=list(rec["texts"]),
                    cached=True,
                    prompt_tokens=int(usage.get("prompt_tokens", 0)),
                    completion_tokens=int(usage.get("completion_tokens", 0)),
                    latency_s=float(rec.get("latency_s", 0.0)),
                    attempts=0,
                    key=key,
                    model=str(rec.get("model", req.model)),
                )
        api_key = api_key_from_env(self.cfg.api_key_env, self.cfg.name, req.model)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None

        url = await self._ensure_url()
        async with self._get_sem():
            token.release()
            slot = await self._slots.acquire() if self._slots is not None else None
            try:
                texts, usage, resp_model, latency, attempts = await self._send(
                    url, req.model, req.body(), headers, req.n, api_key
                )
            finally:
                if slot is not None and self._slots is not None:
                    self._slots.release(slot)
        self._sink.add(
            completed=1,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            total_latency_s=latency,
        )
        if self.cache is not None:
            record = {
                "texts": texts,
                "usage": usage,
                "model": resp_model or req.model,
                "created": time.time(),
                "latency_s": latency,
                "attempts": attempts,
                "endpoint": self.cfg.name,
                "request": {
                    "model": req.model,
                    "messages": summarize_messages(req.messages),
                    "n": req.n,
                    "seed": req.seed,
                    "temperature": req.temperature,
                    "top_p": req.top_p,
                    "max_tokens": req.max_tokens,
                    "extra": req.extra,
                },
            }
            try:
                await self.cache.aput(key, record)
            except OSError as exc:  # the answer is still good; only persistence failed
                log.warning("endpoint=%s could not write cache record %s: %s",
                            self.cfg.name, key, exc)
        return ChatResult(
            texts=texts,
            cached=False,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            latency_s=latency,
            attempts=attempts,
            key=key,
            model=resp_model or req.model,
        )

    async def _send(
        self,
        url: str,
        model: str,
        payload: bytes,
        headers: dict[str, str] | None,
        n: int,
        api_key: str | None,
    ) -> tuple[list[str], dict[str, int], str | None, float, int]:
        """POST ``payload`` until a valid completion arrives or retries are exhausted."""
        cfg = self.cfg
        aiohttp = _aiohttp()
        session = self._get_session()
        t0 = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            self._sink.add(requests_sent=1)
            retry_after: float | None = None
            try:
                async with session.post(
                    url, data=payload, headers=headers, timeout=self._timeout
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    if status == 200:
                        texts, usage, resp_model = _parse_completion(raw, n)
                        return texts, usage, resp_model, time.perf_counter() - t0, attempt
                    if status == 429:
                        self._sink.add(throttled=1)
                        reason = "http_429"
                        detail = "throttled by server"
                        retry_after = _retry_after_s(resp.headers.get("Retry-After"))
                    elif status >= 500 or status == 408:
                        reason = f"http_{status}"
                        detail = redacted_excerpt(raw, 200, api_key)
                    else:
                        detail = redacted_excerpt(raw, 300, api_key)
                        raise ModelCallError(cfg.name, model, f"http_{status}: {detail}", attempt)
            except _Malformed as exc:
                reason, detail = "malformed", str(exc)
            except asyncio.TimeoutError:
                reason, detail = "timeout", f"no complete response within {cfg.timeout_s:g} s"
            except aiohttp.ClientPayloadError as exc:
                reason, detail = "malformed", f"incomplete body ({type(exc).__name__})"
            except aiohttp.ClientError as exc:
                reason, detail = "connection", f"{type(exc).__name__}: {exc}"
            detail = redact(detail, api_key)
            if attempt > cfg.max_retries:
                log.warning("endpoint=%s model=%s giving up after %d attempts: %s (%s)",
                            cfg.name, model, attempt, reason, detail)
                raise ModelCallError(cfg.name, model, f"{reason}: {detail}", attempt) from None
            self._sink.add(retries=1)
            self._sink.reason("retries_by_reason", reason)
            cap = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** (attempt - 1)))
            delay = self._rng.uniform(0.0, cap)  # full jitter
            if retry_after is not None:
                delay = min(cfg.backoff_max_s, max(delay, retry_after))
            log.info("endpoint=%s model=%s attempt %d/%d failed: %s (%s); retrying in %.2f s",
                     cfg.name, model, attempt, cfg.max_retries + 1, reason, detail, delay)
            await asyncio.sleep(delay)
