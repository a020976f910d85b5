"""Simulated OpenAI-compatible chat server (TEST DOUBLE / OFFLINE DEMO, not a model).

Serves the real OpenAI wire protocol on loopback so the pipeline, the client's retry logic and
the benchmark can run without GPUs. Answers come from a :class:`~r2i.sim.brains.Brain`
(``EchoBrain`` by default, ``ToyBrain`` with ``--world``); this module is only the transport:

* ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
  ``GET /stats`` (JSON counters), ``POST /stats/reset``.
* Request validation (HTTP 400), a fixed ``--latency`` (plus optional ``--latency-jitter``).
* Injected transport faults, chosen per request by an RNG seeded with ``--seed`` so runs are
  reproducible: 429 (with ``Retry-After: 0``), 500, timeout (hang until the client gives up or
  the server stops), malformed (200 with a non-JSON body) and truncated (200 with half a JSON body).
* ``--max-concurrency``: requests beyond it get 429 immediately, like a rate-limited API.
* ``--api-key-env VAR``: require ``Authorization: Bearer $VAR`` (401 otherwise), to test that
  clients send keys; the key itself is never stored or logged, only counted.

Use ``serve(...)`` to run it inside a test's event loop, or the ``r2i-sim-server`` CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .brains import SIM_MODELS, Brain, EchoBrain

__all__ = ["FAULT_KINDS", "SimServer", "SimSettings", "build_brain", "main", "serve"]

log = logging.getLogger("r2i.sim.server")

FAULT_KINDS = ("429", "500", "timeout", "malformed", "truncated")
_JSON = "application/json"


@dataclass
class SimSettings:
    """Transport behaviour of the simulated server (see module docstring)."""

    latency: float = 0.0
    latency_jitter: float = 0.0
    fault_429: float = 0.0
    fault_500: float = 0.0
    fault_timeout: float = 0.0
    fault_malformed: float = 0.0
    fault_truncated: float = 0.0
    seed: int = 0
    max_concurrency: int = 0  # 0 = unlimited
    hang_s: float = 3600.0
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        probs = self.fault_probs()
        if any(p < 0 or p > 1 for p in probs.values()) or sum(probs.values()) > 1 + 1e-9:
            raise ValueError(f"fault probabilities must be in [0, 1] and sum to <= 1: {probs}")
        if self.latency < 0 or self.latency_jitter < 0:
            raise ValueError("latency and latency_jitter must be >= 0")

    def fault_probs(self) -> dict[str, float]:
        return {
            "429": self.fault_429,
            "500": self.fault_500,
            "timeout": self.fault_timeout,
            "malformed": self.fault_malformed,
            "truncated": self.fault_truncated,
        }


def _validate(body: Any) -> str | None:
    """Why ``body`` is not a valid chat completion request (``None`` if it is)."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' must be a non-empty string"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list"
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return "each message needs a string 'role'"
        c = m.get("content")
        if isinstance(c, str):
            continue
        if not isinstance(c, list):
            return "message 'content' must be a string or a list of parts"
        for p in c:
            t = p.get("type") if isinstance(p, dict) else None
            if t == "text" and isinstance(p.get("text"), str):
                continue
            iu = p.get("image_url") if t == "image_url" else None
            if isinstance(iu, dict) and isinstance(iu.get("url"), str):
                continue
            return "content parts must be {'type':'text','text':str} or image_url with a url"
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        return "'n' must be an integer in [1, 128]"
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return "'seed' must be an integer"
    for k, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        v = body.get(k)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)
                              or not lo <= v <= hi):
            return f"'{k}' must be a number in [{lo}, {hi}]"
    mt = body.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
        return "'max_tokens' must be a positive integer"
    return None


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for m in messages:
        c = m["content"]
        if isinstance(c, str):
            total += len(c) // 4
        else:
            for p in c:
                total += len(p["text"]) // 4 if p["type"] == "text" else 256
    return total


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": "sim_error", "code": status}})
    return web.Response(status=status, text=body, content_type=_JSON, headers=headers)


class SimServer:
    """State and handlers of one simulated server (counters, fault RNG, brain)."""

    def __init__(self, brain: Brain | None = None, settings: SimSettings | None = None) -> None:
        self.brain: Brain = brain if brain is not None else EchoBrain()
        self.settings = settings or SimSettings()
        self._fault_rng = random.Random(self.settings.seed)
        self._jitter_rng = random.Random(self.settings.seed + 1)
        self._thresholds: list[tuple[float, str]] = []
        acc = 0.0
        for kind, p in self.settings.fault_probs().items():
            if p > 0:
                acc += p
                self._thresholds.append((acc, kind))
        self._expected_key = (
            os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
        )
        if self.settings.api_key_env and not self._expected_key:
            raise ValueError(f"--api-key-env: variable {self.settings.api_key_env} is not set")
        self._run_in_thread = bool(getattr(self.brain, "run_in_thread", True))
        # One worker: brains need not be thread-safe, and the loop stays responsive.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sim-brain") \
            if self._run_in_thread else None
        self._shutdown = asyncio.Event()
        self._ids = 0
        self.base_url: str | None = None
        self.reset_stats()

    # -- counters --------------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero all counters (the fault RNG continues, so a reset does not replay faults)."""
        self.requests = 0
        self.completed = 0
        self.faults: Counter[str] = Counter({k: 0 for k in FAULT_KINDS})
        self.throttled = 0
        self.bad_requests = 0
        self.brain_errors = 0
        self.per_model: dict[str, Counter[str]] = {}
        self.auth: Counter[str] = Counter({"present": 0, "missing": 0, "rejected": 0})
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = time.time()
        # time-weighted occupancy (for benchmarks: mean requests in flight, idle time)
        self._t_last = self._t_reset = time.monotonic()
        self.in_flight_seconds = 0.0  # integral of in_flight over time
        self.busy_seconds = 0.0  # time with at least one request in flight
        self._t_first: float | None = None
        self._t_end: float | None = None
        self._buckets: dict[int, float] = {}  # occupancy per second since the reset

    def _add_area(self, t0: float, t1: float) -> None:
        """Spread ``in_flight x (t1 - t0)`` over the 1 s buckets it covers."""
        base = self._t_reset
        while t0 < t1:
            k = int(t0 - base)
            edge = min(t1, base + k + 1)
            self._buckets[k] = self._buckets.get(k, 0.0) + self.in_flight * (edge - t0)
            t0 = edge

    def _occupancy(self, delta: int) -> None:
        now = time.monotonic()
        dt = now - self._t_last
        self.in_flight_seconds += self.in_flight * dt
        if self.in_flight:
            self._add_area(self._t_last, now)
        if self.in_flight > 0:
            self.busy_seconds += dt
        self._t_last = now
        self.in_flight += delta
        if self._t_first is None:
            self._t_first = now
        self._t_end = now

    def stats(self) -> dict[str, Any]:
        """The JSON document served at ``GET /stats``."""
        return {
            "requests": self.requests,
            "completed": self.completed,
            "faults": dict(self.faults),
            "throttled": self.throttled,
            "bad_requests": self.bad_requests,
            "brain_errors": self.brain_errors,
            "per_model": {m: dict(c) for m, c in sorted(self.per_model.items())},
            "auth": dict(self.auth),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "in_flight_seconds": round(self.in_flight_seconds, 6),
            "busy_seconds": round(self.busy_seconds, 6),
            # from the first request that was admitted to the last one that finished
            "window_seconds": round((self._t_end or 0.0) - (self._t_first or 0.0), 6),
            # the same two moments on the machine's monotonic clock (CLOCK_MONOTONIC is shared by
            # all processes on Linux), so a benchmark can place them in its own timeline
            "first_request_monotonic": self._t_first,
            "last_response_monotonic": self._t_end,
            # mean requests in flight in each second since the last reset (a timeline)
            "in_flight_per_second": [round(self._buckets.get(k, 0.0), 2)
                                     for k in range(max(self._buckets, default=-1) + 1)],
            "since": self.started,
        }

    # -- app -------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)  # inline images are large
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stats/reset", self.post_reset)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self._shutdown.set()  # wakes "timeout" faults so shutdown never waits for them

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "pid": os.getpid(), "brain": type(self.brain).__name__,
             "simulated": True}
        )

    async def models(self, request: web.Request) -> web.Response:
        names = getattr(self.brain, "models", SIM_MODELS)
        return web.json_response({
            "object": "list",
            "data": [{"id": m, "object": "model", "owned_by": "r2i-sim", "created": 0}
                     for m in names],
        })

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def post_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"status": "reset"})

    def _pick_fault(self) -> str | None:
        if not self._thresholds:
            return None
        u = self._fault_rng.random()
        for threshold, kind in self._thresholds:
            if u < threshold:
                return kind
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        auth = request.headers.get("Authorization")
        self.auth["present" if auth else "missing"] += 1
        if self._expected_key is not None and auth != f"Bearer {self._expected_key}":
            self.auth["rejected"] += 1
            return _error(401, "missing or invalid API key")  # never echo the header
        try:
            body = json.loads(await request.read())
        except ValueError:
            self.bad_requests += 1
            return _error(400, "body is not valid JSON")
        problem = _validate(body)
        if problem:
            self.bad_requests += 1
            return _error(400, problem)
        model: str = body["model"]
        pm = self.per_model.get(model)
        if pm is None:
            pm = self.per_model[model] = Counter({"requests": 0, "completed": 0})
        pm["requests"] += 1

        limit = self.settings.max_concurrency
        if limit and self.in_flight >= limit:
            self.throttled += 1
            return _error(429, "server busy (simulated concurrency limit)", {"Retry-After": "0"})
        self._occupancy(+1)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._complete(body, model, pm)
        finally:
            self._occupancy(-1)

    def _think(self, model: str, messages: Any, n: int, seed: Any,
               params: dict[str, Any]) -> asyncio.Future[list[str]]:
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            return loop.run_in_executor(self._pool, self.brain.complete, model, messages, n, seed,
                                        params)
        fut: asyncio.Future[list[str]] = loop.create_future()
        try:
            fut.set_result(self.brain.complete(model, messages, n, seed, params))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    async def _complete(self, body: dict[str, Any], model: str,
                        pm: Counter[str]) -> web.StreamResponse:
        s = self.settings
        fault = self._pick_fault()
        if fault == "429":
            self.faults["429"] += 1
            return _error(429, "rate limited (simulated)", {"Retry-After": "0"})
        delay = s.latency
        if s.latency_jitter:
            delay = max(0.0, delay + self._jitter_rng.uniform(-s.latency_jitter, s.latency_jitter))
        messages = body["messages"]
        n = body.get("n", 1)
        seed = body.get("seed")
        params = {k: v for k, v in body.items() if k not in ("model", "messages", "n", "seed")}
        # The brain works while the simulated latency runs (like a GPU server, whose compute is
        # its latency): a reply takes max(latency, brain time), not their sum.
        brain: asyncio.Future[list[str]] | None = None
        if fault not in ("500", "timeout", "malformed"):
            brain = self._think(model, messages, n, seed, params)
            # a request cancelled during the delay must not leave an unretrieved error behind
            brain.add_done_callback(lambda f: f.cancelled() or f.exception())
        if delay:
            await asyncio.sleep(delay)
        if fault == "500":
            self.faults["500"] += 1
            return _error(500, "internal error (simulated)")
        if fault == "timeout":
            self.faults["timeout"] += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._shutdown.wait(), timeout=s.hang_s)
            return _error(503, "server shutting down")
        if fault == "malformed":
            self.faults["malformed"] += 1
            return web.Response(status=200, text="<html><body>upstream error (simulated)</body>"
                                "</html>", content_type="text/html")

        try:
            assert brain is not None
            texts = await brain
            if len(texts) != n or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"brain returned {len(texts)} texts for n={n}")
        except Exception as exc:
            self.brain_errors += 1
            log.exception("brain failed")
            return _error(500, f"brain error: {type(exc).__name__}: {exc}")

        self._ids += 1
        prompt_tokens = _prompt_tokens(messages)
        completion_tokens = sum(len(t) // 4 for t in texts)
        resp = {
            "id": f"chatcmpl-sim-{self._ids}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "r2i-sim",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t},
                 "finish_reason": "stop", "logprobs": None}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if body.get("tools"):  # OpenAI function calling: <tool_call> text -> tool_calls
            from r2i.sim.zoomtool_brain import with_tool_calls
            resp["choices"] = [with_tool_calls(c) for c in resp["choices"]]
        data = json.dumps(resp, ensure_ascii=False).encode("utf-8")
        if fault == "truncated":
            self.faults["truncated"] += 1
            return web.Response(status=200, body=data[: len(data) // 2], content_type=_JSON)
        self.completed += 1
        pm["completed"] += 1
        return web.Response(status=200, body=data, content_type=_JSON)


def build_brain(world: str | None, **options: Any) -> Brain:
    """``EchoBrain`` without a world; ``ToyBrain(world, **options)`` (imported only then) with one."""
    if not world:
        return EchoBrain()
    from r2i.sim.toybrain import ToyBrain

    return ToyBrain(world, **options)  # type: ignore[no-any-return]


#: ToyBrain options exposed as flags: (flag, constructor argument, type, help).
BRAIN_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--teacher-error-rate", "teacher_error_rate", float, "teacher A error rate (B: 1.5x unless set)"),
    ("--teacher-b-error-rate", "teacher_b_error_rate", float, "teacher B error rate"),
    ("--student-max-pixels", "student_max_pixels", int, "student's pixel budget (downscale first)"),
    ("--student-min-evidence-px", "student_min_evidence_px", float,
     "detail size the student needs after downscaling"),
    ("--student-error-rate", "student_error_rate", float, "student error rate when it can see"),
)


@contextlib.asynccontextmanager
async def serve(
    brain: Brain | None = None,
    settings: SimSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[SimServer]:
    """Run a :class:`SimServer` in the current event loop (tests); ``.base_url`` is set."""
    sim = SimServer(brain, settings)
    runner = web.AppRunner(sim.make_app(), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0]
    sim.base_url = f"http://{host}:{bound[1]}"
    try:
        yield sim
    finally:
        await runner.cleanup()


def _new_loop(no_uvloop: bool = False) -> asyncio.AbstractEventLoop:
    """uvloop when installed (cheaper transports keep the server's share of the benchmark's
    CPU small), else the stdlib loop."""
    if not no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r2i-sim-server",
        description=(
            "SIMULATED OpenAI-compatible chat server: a test double and offline demo for the R2I "
            "pipeline, NOT a real model. Answers come from EchoBrain (default) or, with --world, "
            "from the toy world's ground truth; latency and transport faults can be injected."
        ),
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--world", default=None, help="toy world dir (enables ToyBrain)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    p.add_argument("--latency-jitter", type=float, default=0.0,
                   help="uniform +- jitter added to --latency (seconds)")
    for kind in FAULT_KINDS:
        p.add_argument(f"--fault-{kind}", type=float, default=0.0, metavar="P",
                       help=f"probability of a simulated {kind} fault per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault/jitter RNG")
    p.add_argument("--max-concurrency", type=int, default=0,
                   help="requests in flight beyond this get 429 (0 = unlimited)")
    p.add_argument("--hang-s", type=float, default=3600.0,
                   help="how long a 'timeout' fault hangs (it ends early on shutdown)")
    p.add_argument("--api-key-env", default=None,
                   help="require 'Authorization: Bearer $VAR' (name of the variable)")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    p.add_argument("--log-level", default="WARNING")
    for flag, dest, typ, help_ in BRAIN_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=f"toy world: {help_}")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point ``r2i-sim-server``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SimSettings(
        latency=args.latency, latency_jitter=args.latency_jitter,
        fault_429=args.fault_429, fault_500=args.fault_500, fault_timeout=args.fault_timeout,
        fault_malformed=args.fault_malformed, fault_truncated=args.fault_truncated,
        seed=args.seed, max_concurrency=args.max_concurrency, hang_s=args.hang_s,
        api_key_env=args.api_key_env,
    )
    brain_options = {
        arg: getattr(args, arg) for _, arg, _, _ in BRAIN_FLAGS if getattr(args, arg) is not None
    }
    if brain_options and not args.world:
        raise SystemExit("r2i-sim-server: simulated-model options need --world")
    sim = SimServer(build_brain(args.world, **brain_options), settings)

    def ready(msg: str) -> None:
        print(f"r2i-sim-server (simulated, test double): {msg}", flush=True)

    web.run_app(sim.make_app(), host=args.host, port=args.port, access_log=None,
                shutdown_timeout=2.0, handler_cancellation=True, backlog=1024,
                print=ready, loop=_new_loop(args.no_uvloop))


if __name__ == "__main__":
    main(sys.argv[1:])
