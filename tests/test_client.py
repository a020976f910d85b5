"""Model client against the in-process simulated server: retries, cache, n, dedup, errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from r2i.client import (
    CallCache,
    ClientStats,
    EndpointConfig,
    ModelCallError,
    ModelClient,
    cache_key,
    canonical_json,
    image_data_url,
    normalize_base_url,
    seed_for,
    summarize_messages,
    user_message,
)
from r2i.client.cache import filesystem_type
from r2i.sim.brains import EchoBrain
from r2i.sim.server import SimSettings, serve

MODEL = "sim-teacher-a"


def fast_cfg(base_url: str, **kw: Any) -> EndpointConfig:
    """Endpoint settings that make retries quick in tests."""
    defaults: dict[str, Any] = dict(name="sim", base_url=base_url, timeout_s=0.5,
                                    backoff_base_s=0.01, backoff_max_s=0.05, max_retries=25,
                                    max_concurrency=16)
    defaults.update(kw)
    return EndpointConfig(**defaults)


def msgs(i: int) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "be brief"}, user_message(f"question {i}")]


def expected_texts(i: int, seed: int, n: int) -> list[str]:
    return EchoBrain().complete(MODEL, msgs(i), n, seed, {})


@asynccontextmanager
async def scripted_server(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """A throw-away aiohttp server whose chat route is ``handler`` (for shapes the sim lacks)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def completion(texts: list[str]) -> dict[str, Any]:
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": t}}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}


# -- small pure functions ------------------------------------------------------------------------

def test_normalize_base_url() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert normalize_base_url(url) == "http://h:1"
    assert normalize_base_url("https://api.x.com/openai/v1") == "https://api.x.com/openai"
    with pytest.raises(ValueError):
        normalize_base_url("h:1")


def test_endpoint_config_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        EndpointConfig(name="a")
    with pytest.raises(ValueError, match="exactly one"):
        EndpointConfig(name="a", base_url="http://x", launch="srv --port {port}")
    with pytest.raises(ValueError, match="port"):
        EndpointConfig(name="a", launch="srv --port 1")
    cfg = EndpointConfig.from_dict("a", {"base_url": "http://x/v1", "max_concurrency": 3})
    assert cfg.base_url == "http://x" and cfg.max_concurrency == 3
    with pytest.raises(ValueError, match="unknown"):
        EndpointConfig.from_dict("a", {"base_url": "http://x", "max_concurency": 3})
    with pytest.raises(ValueError, match="credentials") as ei:
        EndpointConfig.from_dict("a", {"base_url": "http://x", "api_key": "sk-SECRET-CFG"})
    assert "sk-SECRET-CFG" not in str(ei.value)


def test_image_data_url_and_user_message(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 3), (255, 0, 0))
    url = image_data_url(img)
    assert url.startswith("data:image/png;base64,")
    assert image_data_url(img, fmt="JPEG").startswith("data:image/jpeg;base64,")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert image_data_url(buf.getvalue()) == url
    p = tmp_path / "x.png"
    p.write_bytes(buf.getvalue())
    assert image_data_url(p) == url == image_data_url(str(p))
    assert image_data_url(url) == url
    m = user_message("what?", [img, p])
    assert m["role"] == "user"
    assert [part["type"] for part in m["content"]] == ["image_url", "image_url", "text"]
    summary = summarize_messages([m])
    assert "base64" not in json.dumps(summary) and summary[0]["content"][0]["mime"] == "image/png"


def test_seed_for_is_deterministic_31_bit() -> None:
    s = seed_for("item-1", "questions")
    assert s == seed_for("item-1", "questions") and 0 <= s < 2**31
    assert s != seed_for("item-1", "answers")


def test_cache_key_is_canonical() -> None:
    kw: dict[str, Any] = dict(model=MODEL, messages=msgs(1), n=2, seed=3, temperature=1,
                              top_p=None, max_tokens=5, extra={"stop": ["\n"]})
    k = cache_key(**kw)
    payload = {**kw, "temperature": 1.0}
    assert k == hashlib.sha256(canonical_json(payload)).hexdigest()
    assert k == cache_key(**{**kw, "temperature": 1.0})
    assert k != cache_key(**{**kw, "seed": 4})
    assert cache_key(**{**kw, "extra": None}) == cache_key(**{**kw, "extra": {}})


def _reference_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_canonical_json_splices_images_without_changing_a_byte() -> None:
    """Long escape-free strings (inline images) skip the JSON encoder; the bytes, and so every
    cache key, stay exactly those of json.dumps, whatever else the messages hold."""
    import random

    rng = random.Random(0)
    url = "data:image/png;base64," + base64.b64encode(rng.randbytes(30_000)).decode()
    tricky_long = [
        "x" * 5000 + '"',  # needs escaping
        "\\" * 3000,
        "a\nb" * 2000 + "\x01",
        "é" * 5000,  # not ASCII (written as is, but not spliced)
        "\x7f" * 5000,
    ]
    lookalikes = ["\x000", "\x001", 'x"\x000', "\x00", "\x000\x00"]  # JSON like a placeholder
    for case in range(300):
        parts: list[Any] = [{"type": "text", "text": rng.choice([*lookalikes, "plain", "ü"])}]
        for _ in range(rng.randrange(4)):
            parts.append({"type": "image_url", "image_url": {"url": rng.choice([url, *tricky_long])}})
        obj: Any = [{"role": "user", "content": parts}, {"n": case, "t": (url, 1.5, None, True)}]
        assert canonical_json(obj) == _reference_json(obj), case
    # the same image in many requests: spliced from the memo, still identical
    big = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * 3}]
    assert canonical_json(big) == _reference_json(big)
    # both paths are taken: spliced, and the fallback when a real string reads like a placeholder
    from r2i.client import cache as cache_mod

    found: list[bytes] = []
    small = cache_mod._swap_long_strings(big, found)
    assert len(found) == 3 and cache_mod._spliced(cache_mod._plain_json(small), found) is not None
    clash = [big, "\x000"]
    found = []
    small = cache_mod._swap_long_strings(clash, found)
    assert cache_mod._spliced(cache_mod._plain_json(small), found) is None
    assert canonical_json(clash) == _reference_json(clash)


def test_filesystem_type_of_tmp(tmp_path: Path) -> None:
    assert filesystem_type(tmp_path)  # some type is found on Linux
    assert CallCache(tmp_path).offload_reads in (True, False)


# -- chat against the simulated server ---------------------------------------------------------

async def test_chat_caches_and_counts(tmp_path: Path) -> None:
    async with serve() as sim:
        assert sim.base_url
        stats = ClientStats()
        async with ModelClient(fast_cfg(sim.base_url + "/v1/"), cache=CallCache(tmp_path),
                               stats=stats) as client:
            r1 = await client.chat(model=MODEL, messages=msgs(1), n=3, seed=7, temperature=0.7,
                                   top_p=0.9, max_tokens=64)
            r2 = await client.chat(model=MODEL, messages=msgs(1), n=3, seed=7, temperature=0.7,
                                   top_p=0.9, max_tokens=64)
        assert r1.texts == expected_texts(1, 7, 3) == r2.texts
        assert not r1.cached and r2.cached and r1.key == r2.key and r1.attempts == 1
        assert r1.prompt_tokens > 0 and r1.completion_tokens > 0
        assert r2.prompt_tokens == r1.prompt_tokens
        assert sim.requests == 1
        d = stats.to_dict()
        assert d["requests_sent"] == 1 and d["cache_hits"] == 1 and d["calls"] == 2
        assert d["completion_tokens"] == r1.completion_tokens
        rec = json.loads(CallCache(tmp_path).path(r1.key).read_text())
        assert rec["texts"] == r1.texts and rec["request"]["seed"] == 7
        assert rec["usage"]["prompt_tokens"] == r1.prompt_tokens and "created" in rec


async def test_cache_hit_after_relaunch_on_another_port(tmp_path: Path) -> None:
    async with serve() as a:
        assert a.base_url
        async with ModelClient(fast_cfg(a.base_url), cache=CallCache(tmp_path)) as c:
            first = await c.chat(model=MODEL, messages=msgs(2), seed=1)
    async with serve() as b:
        assert b.base_url and b.base_url != a.base_url
        async with ModelClient(fast_cfg(b.base_url), cache=CallCache(tmp_path)) as c:
            again = await c.chat(model=MODEL, messages=msgs(2), seed=1)
        assert again.cached and again.texts == first.texts and b.requests == 0


async def test_identical_inflight_calls_are_deduplicated(tmp_path: Path) -> None:
    async with serve(settings=SimSettings(latency=0.1)) as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url), cache=CallCache(tmp_path)) as c:
            rs = await asyncio.gather(*(c.chat(model=MODEL, messages=msgs(3), seed=5)
                                        for _ in range(10)))
        assert sim.requests == 1 and c.stats.dedup_hits == 9
        assert all(r.texts == rs[0].texts for r in rs)


async def test_cancelled_leader_hands_over_to_a_follower(tmp_path: Path) -> None:
    async with serve(settings=SimSettings(latency=0.2)) as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url), cache=CallCache(tmp_path)) as c:
            leader = asyncio.ensure_future(c.chat(model=MODEL, messages=msgs(7), seed=2))
            await asyncio.sleep(0.05)
            follower = asyncio.ensure_future(c.chat(model=MODEL, messages=msgs(7), seed=2))
            await asyncio.sleep(0.05)
            leader.cancel()
            res = await follower
            assert res.texts == expected_texts(7, 2, 1) and not res.cached
            with pytest.raises(asyncio.CancelledError):
                await leader
        assert sim.requests == 2  # the cancelled request, then the follower's own


async def test_many_gathered_calls_with_duplicates_complete(tmp_path: Path) -> None:
    """More calls than the admission gate, many of them identical: no deadlock, one send each."""
    async with serve(settings=SimSettings(latency=0.01)) as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url, max_concurrency=2),
                               cache=CallCache(tmp_path)) as c:
            rs = await asyncio.gather(*(c.chat(model=MODEL, messages=msgs(i % 5), seed=i % 5)
                                        for i in range(200)))
        assert [r.texts for r in rs] == [expected_texts(i % 5, i % 5, 1) for i in range(200)]
        assert sim.requests == 5 and c.stats.cache_hits + c.stats.dedup_hits == 195


async def test_aclose_cancels_calls_in_flight() -> None:
    async with serve(settings=SimSettings(latency=5.0)) as sim:
        assert sim.base_url
        c = ModelClient(fast_cfg(sim.base_url, timeout_s=30))
        call = asyncio.ensure_future(c.chat(model=MODEL, messages=msgs(8), seed=1))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await c.aclose()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert time.monotonic() - t0 < 2
        with pytest.raises(RuntimeError, match="closed"):
            await c.chat(model=MODEL, messages=msgs(8), seed=1)


async def test_concurrency_is_bounded() -> None:
    async with serve(settings=SimSettings(latency=0.05)) as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url, max_concurrency=3)) as c:
            await asyncio.gather(*(c.chat(model=MODEL, messages=msgs(i), seed=i)
                                   for i in range(15)))
        assert sim.max_in_flight == 3 and sim.completed == 15


async def test_faults_give_identical_results(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(a) 20% mixed transport faults: every call completes, results equal a fault-free run."""
    caplog.set_level(logging.INFO, logger="r2i.client")
    calls = [(i, seed_for(i, "faults"), 1 + i % 3) for i in range(60)]

    async def run(settings: SimSettings, cache_dir: Path) -> tuple[list[list[str]], Any, Any]:
        async with serve(settings=settings) as sim:
            assert sim.base_url
            async with ModelClient(fast_cfg(sim.base_url), cache=CallCache(cache_dir)) as c:
                rs = await asyncio.gather(*(c.chat(model=MODEL, messages=msgs(i), n=n, seed=s,
                                                   temperature=0.5)
                                            for i, s, n in calls))
            return [r.texts for r in rs], c.stats.to_dict(), sim.stats()

    clean, _, clean_srv = await run(SimSettings(), tmp_path / "clean")
    faulty, cstats, srv = await run(
        SimSettings(fault_429=0.04, fault_500=0.04, fault_timeout=0.04, fault_malformed=0.04,
                    fault_truncated=0.04, seed=11),
        tmp_path / "faulty",
    )
    assert faulty == clean == [expected_texts(i, s, n) for i, s, n in calls]
    assert clean_srv["requests"] == 60
    assert sum(srv["faults"].values()) > 0 and srv["completed"] >= 60
    # Every retry is one more request; every injected fault caused one (a request that is merely
    # slow on a busy machine may time out too, hence <=).
    assert srv["requests"] == 60 + cstats["retries"]
    assert sum(srv["faults"].values()) <= cstats["retries"]
    kinds = set(cstats["retries_by_reason"])
    assert kinds <= {"http_429", "http_500", "timeout", "malformed"} and len(kinds) >= 3
    assert "endpoint=sim" in caplog.text and "retrying" in caplog.text


async def test_retry_cap_exhausted_raises_model_call_error() -> None:
    """(e) a server that always fails: ModelCallError names endpoint, model, reason, attempts."""
    async with serve(settings=SimSettings(fault_500=1.0)) as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url, max_retries=2, name="teacher-ep")) as c:
            with pytest.raises(ModelCallError) as ei:
                await c.chat(model=MODEL, messages=msgs(1), seed=1)
        err = ei.value
        assert err.endpoint == "teacher-ep" and err.model == MODEL and err.attempts == 3
        assert "http_500" in err.reason and "teacher-ep" in str(err) and "http_500" in str(err)
        assert sim.requests == 3 and c.stats.errors == 1
        assert c.stats.retries_by_reason["http_500"] == 2


async def test_timeout_cap_reason() -> None:
    async with serve(settings=SimSettings(fault_timeout=1.0)) as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url, timeout_s=0.2, max_retries=1)) as c:
            with pytest.raises(ModelCallError, match="timeout"):
                await c.chat(model=MODEL, messages=msgs(1))


async def test_connection_refused_is_retried_then_fails() -> None:
    from r2i.client import free_port

    cfg = fast_cfg(f"http://127.0.0.1:{free_port()}", max_retries=2)
    async with ModelClient(cfg) as c:
        with pytest.raises(ModelCallError, match="connection") as ei:
            await c.chat(model=MODEL, messages=msgs(1))
    assert ei.value.attempts == 3


async def test_client_error_is_not_retried() -> None:
    async with serve() as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url)) as c:
            with pytest.raises(ModelCallError, match="http_400") as ei:
                await c.chat(model=MODEL, messages=msgs(1), temperature=9.0)
            with pytest.raises(ValueError, match="core request fields"):
                await c.chat(model=MODEL, messages=msgs(1), extra={"n": 3})
        assert ei.value.attempts == 1 and sim.requests == 1 and sim.bad_requests == 1


async def test_malformed_shapes_are_retried() -> None:
    """Missing choices, too few choices, null content, truncated JSON: all retried."""
    bad = [
        web.Response(text='{"object": "chat.completion"}', content_type="application/json"),
        web.json_response(completion(["only one"])),
        web.json_response({"choices": [{"index": 0, "message": {"content": None}},
                                       {"index": 1, "message": {"content": "x"}}]}),
        web.Response(text=json.dumps(completion(["a", "b"]))[:20],
                     content_type="application/json"),
        web.Response(status=503, text="busy"),
    ]
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body["seed"])
        if len(seen) <= len(bad):
            return bad[len(seen) - 1]
        # Choices out of order: the client must sort them by index.
        good = completion(["second", "first"])
        good["choices"][0]["index"], good["choices"][1]["index"] = 1, 0
        return web.json_response(good)

    async with scripted_server(handler) as url, ModelClient(fast_cfg(url)) as c:
        r = await c.chat(model=MODEL, messages=msgs(1), n=2, seed=42)
    assert r.texts == ["first", "second"] and r.attempts == 6
    assert seen == [42] * 6
    assert c.stats.retries_by_reason == {"malformed": 4, "http_503": 1}
    assert r.prompt_tokens == 3 and r.completion_tokens == 5


async def test_retry_after_is_honoured_and_capped() -> None:
    answers = iter([("0.3", 429), (None, 200), ("100", 429), (None, 200)])

    async def handler(request: web.Request) -> web.Response:
        retry_after, status = next(answers)
        if status == 429:
            return web.Response(status=429, headers={"Retry-After": retry_after})
        return web.json_response(completion(["ok"]))

    async with scripted_server(handler) as url, \
            ModelClient(fast_cfg(url, backoff_max_s=1.0)) as c:
        t0 = time.monotonic()
        await c.chat(model=MODEL, messages=msgs(1), seed=1)
        assert time.monotonic() - t0 >= 0.3  # waited at least Retry-After
        # Retry-After: 100 s, capped by backoff_max_s = 1 s; uncapped it would hit this timeout.
        await asyncio.wait_for(c.chat(model=MODEL, messages=msgs(2), seed=1), timeout=30)
    assert c.stats.throttled == 2


async def test_supports_n_false_splits_into_seeded_requests(tmp_path: Path) -> None:
    """(f) n separate requests with seeds seed..seed+n-1, cached one by one, in order."""
    async with serve() as sim:
        assert sim.base_url
        cache = CallCache(tmp_path)
        async with ModelClient(fast_cfg(sim.base_url, supports_n=False), cache=cache) as c:
            r = await c.chat(model=MODEL, messages=msgs(4), n=3, seed=100, temperature=1.0)
            assert r.texts == expected_texts(4, 100, 3) and not r.cached
            assert sim.requests == 3 and len(cache) == 3 and r.attempts == 3
            assert sim.per_model[MODEL]["requests"] == 3
            again = await c.chat(model=MODEL, messages=msgs(4), n=3, seed=100, temperature=1.0)
            assert again.cached and again.texts == r.texts and sim.requests == 3
            # A single sample with seed 101 is one of the cached sub-calls.
            one = await c.chat(model=MODEL, messages=msgs(4), n=1, seed=101, temperature=1.0)
            assert one.cached and one.texts == r.texts[1:2]
            # Without a seed the sub-seeds are derived from the request, deterministically.
            a = await c.chat(model=MODEL, messages=msgs(5), n=2)
            b = await c.chat(model=MODEL, messages=msgs(5), n=2)
            assert a.texts == b.texts and b.cached and len(set(a.texts)) == 2


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"texts": ["x"]', b"[1, 2]",
                                     b'{"key": "wrong", "texts": ["x"]}',
                                     b'{"texts": [1, 2]}'])
async def test_corrupt_cache_file_is_a_miss(tmp_path: Path, garbage: bytes) -> None:
    """(g) a corrupt or partial record is re-fetched and overwritten, never a crash."""
    cache = CallCache(tmp_path)
    key = cache_key(model=MODEL, messages=msgs(6), n=1, seed=9, temperature=None, top_p=None,
                    max_tokens=None, extra=None)
    cache.path(key).parent.mkdir(parents=True, exist_ok=True)
    cache.path(key).write_bytes(garbage)
    assert cache.get(key) is None
    async with serve() as sim:
        assert sim.base_url
        async with ModelClient(fast_cfg(sim.base_url), cache=cache) as c:
            r = await c.chat(model=MODEL, messages=msgs(6), seed=9)
    assert r.key == key and not r.cached and sim.requests == 1
    assert cache.get(key)["texts"] == r.texts  # type: ignore[index]


def test_cache_put_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    cache = CallCache(tmp_path, offload=False)
    key = "ab" + "0" * 62
    for i in range(3):  # same key written repeatedly: last write wins, harmless
        cache.put(key, {"texts": [f"v{i}"]})
    assert cache.get(key)["texts"] == ["v2"]  # type: ignore[index]
    assert [p.name for p in (tmp_path / "ab").iterdir()] == [f"{key}.json"]
    assert list(cache.keys()) == [key] and key in cache
    stray = tmp_path / "ab" / f".{key}.123.deadbeef.tmp"  # as left by a killed writer
    stray.write_text("{")
    assert list(cache.keys()) == [key] and cache.cleanup_temp(older_than_s=3600) == 0
    assert cache.cleanup_temp(older_than_s=-1) == 1 and not stray.exists()


async def test_cache_offload_paths(tmp_path: Path) -> None:
    cache = CallCache(tmp_path, offload=True)
    await cache.aput("cd" + "1" * 62, {"texts": ["t"]})
    assert (await cache.aget("cd" + "1" * 62))["texts"] == ["t"]  # type: ignore[index]
    auto = CallCache(tmp_path / "auto")
    auto.SLOW_INLINE_S = -1.0  # every inline write counts as slow
    for i in range(16):
        await auto.aput(f"{i:02d}" + "2" * 62, {"texts": ["t"]})
    assert auto.offload_writes and len(auto) == 16
