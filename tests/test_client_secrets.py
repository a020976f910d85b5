"""(d) The API key is sent as a Bearer token and appears nowhere else."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from r2i.client import (
    CallCache,
    EndpointConfig,
    ModelCallError,
    ModelClient,
    open_endpoint,
    user_message,
)
from r2i.sim.server import SimSettings, serve

SENTINEL = "sk-SENTINEL-7f3a9c1e55d04b2e"
ENV = "R2I_TEST_KEY"
MODEL = "sim-judge"


def cfg(base_url: str, **kw: Any) -> EndpointConfig:
    d: dict[str, Any] = dict(name="judge-ep", base_url=base_url, api_key_env=ENV, timeout_s=0.5,
                             backoff_base_s=0.01, backoff_max_s=0.02, max_retries=3)
    d.update(kw)
    return EndpointConfig(**d)


def all_cache_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


async def test_key_is_sent_but_never_stored_logged_or_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV, SENTINEL)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    errors: list[str] = []
    # The server *requires* the exact key, so a success proves it was sent as Bearer.
    settings = SimSettings(api_key_env=ENV, fault_500=0.2, fault_malformed=0.2, seed=3)
    async with serve(settings=settings) as sim:
        assert sim.base_url
        cache = CallCache(tmp_path / "cache")
        client = ModelClient(cfg(sim.base_url, max_retries=30), cache=cache)
        async with client:
            for i in range(8):
                r = await client.chat(model=MODEL, messages=[user_message(f"q{i}")], seed=i)
                texts.extend(r.texts)
            # Failures: a bad request (400) and exhausted retries.
            with pytest.raises(ModelCallError) as e1:
                await client.chat(model=MODEL, messages=[user_message("x")], top_p=7.0)
            errors += [str(e1.value), repr(e1.value)]
        assert sim.auth["present"] == sim.requests and sim.auth["rejected"] == 0
        assert sim.completed == 8 and len(cache) == 8
        errors += [repr(client), repr(client.cfg), str(client.stats.to_dict())]

    async with serve(settings=SimSettings(api_key_env=ENV, fault_500=1.0)) as sim:
        assert sim.base_url
        async with ModelClient(cfg(sim.base_url)) as client:
            with pytest.raises(ModelCallError) as e2:
                await client.chat(model=MODEL, messages=[user_message("y")])
        errors += [str(e2.value), repr(e2.value), e2.value.reason]

    assert texts
    assert SENTINEL.encode() not in all_cache_bytes(tmp_path / "cache")
    assert "retrying" in caplog.text  # retries were logged...
    assert SENTINEL not in caplog.text  # ...without the key
    for text in errors:
        assert SENTINEL not in text


async def test_wrong_key_is_a_clear_non_retried_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SENTINEL)
    monkeypatch.setenv("R2I_OTHER_KEY", "sk-other-1234567890")
    async with serve(settings=SimSettings(api_key_env="R2I_OTHER_KEY")) as sim:
        assert sim.base_url
        async with ModelClient(cfg(sim.base_url)) as client:
            with pytest.raises(ModelCallError, match="http_401") as ei:
                await client.chat(model=MODEL, messages=[user_message("z")])
        assert ei.value.attempts == 1 and sim.auth["rejected"] == 1
        assert SENTINEL not in str(ei.value)


async def test_key_echoed_by_a_server_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misbehaving server that echoes the Authorization header into its error body."""
    monkeypatch.setenv(ENV, SENTINEL)

    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        status = 500 if not calls else 403
        calls.append(status)
        return web.Response(status=status, text=f"denied for {auth} (key {auth[7:]})")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with ModelClient(cfg(url)) as client:
            with pytest.raises(ModelCallError, match="http_403") as ei:
                await client.chat(model=MODEL, messages=[user_message("w")])
    finally:
        await runner.cleanup()
    assert calls == [500, 403]
    assert SENTINEL not in str(ei.value) and "[REDACTED]" in str(ei.value)


async def test_missing_key_variable_is_named_not_valued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("R2I_TEST_MISSING_KEY", raising=False)
    async with serve() as sim:
        assert sim.base_url
        async with ModelClient(cfg(sim.base_url, api_key_env="R2I_TEST_MISSING_KEY")) as client:
            with pytest.raises(ModelCallError, match="R2I_TEST_MISSING_KEY") as ei:
                await client.chat(model=MODEL, messages=[user_message("v")])
        assert sim.requests == 0 and ei.value.attempts == 0
        with pytest.raises(ModelCallError, match="R2I_TEST_MISSING_KEY"):
            async with open_endpoint(cfg(sim.base_url, api_key_env="R2I_TEST_MISSING_KEY")):
                pass
