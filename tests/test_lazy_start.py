"""Lazy endpoints: a server is reached (a launched one started) only on the first cache miss."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from r2i.client import CallCache, EndpointConfig, EndpointStartError, ModelClient
from r2i.synthesis.runtime import ModelSet

from .e2e import SENTINEL, SimServer


@pytest.fixture()
def server(tmp_path: Path):
    srv = SimServer(None, tmp_path / "sim.log", latency=0.01)
    yield srv
    srv.close()


def _msgs(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question {i}"}]


def test_resolver_runs_once_and_only_on_a_miss(server: SimServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2I_TEST_API_KEY", SENTINEL)
    cache = CallCache(tmp_path / "cache")
    cfg = EndpointConfig(name="sim", launch="unused {port}", api_key_env="R2I_TEST_API_KEY")
    calls = []

    async def resolve() -> str:
        calls.append(1)
        await asyncio.sleep(0.05)  # a slow start: concurrent misses must wait, not relaunch
        return server.url

    async def run(ids: range) -> list[str]:
        async with ModelClient(cfg, cache=cache, resolve_url=resolve) as client:
            res = await asyncio.gather(*(client.chat("m", _msgs(i), seed=i) for i in ids))
            return [r.texts[0] for r in res]

    first = asyncio.run(run(range(20)))
    assert len(calls) == 1
    again = asyncio.run(run(range(20)))  # every call cached: nothing is resolved
    assert again == first and len(calls) == 1
    asyncio.run(run(range(25)))  # 5 misses
    assert len(calls) == 2


def test_resolver_failure_fails_every_call_once(tmp_path: Path) -> None:
    cfg = EndpointConfig(name="sim", launch="unused {port}")
    calls = []

    async def resolve() -> str:
        calls.append(1)
        raise EndpointStartError("endpoint 'sim': launched process exited with code 1")

    async def run() -> list[BaseException]:
        async with ModelClient(cfg, resolve_url=resolve) as client:
            res = await asyncio.gather(*(client.chat("m", _msgs(i)) for i in range(10)),
                                       return_exceptions=True)
        return list(res)

    errors = asyncio.run(run())
    assert all(isinstance(e, EndpointStartError) for e in errors)
    assert len(calls) == 1


def test_model_set_starts_no_server_when_everything_is_cached(tmp_path: Path) -> None:
    """A launched simulator: first run starts it; a fully cached rerun starts nothing."""
    log = tmp_path / "endpoint.log"
    spec = {"teacher": {"model": "m", "endpoint_config": {
        "name": "sim", "launch": "r2i-sim-server --host 127.0.0.1 --port {port}",
        "startup_timeout_s": 60}}}

    firsts: list[int] = []

    async def run() -> tuple[list[str], list[str]]:
        async with ModelSet(spec, tmp_path / "cache", lazy=True, endpoint_log=str(log),
                            on_first_request=lambda: firsts.append(1)) as models:
            res = await asyncio.gather(*(models.chat("teacher", f"q{i}", seed=i, temperature=0.0)
                                         for i in range(5)))
            return [r.texts[0] for r in res], list(models.endpoints_started)

    texts, started = asyncio.run(run())
    assert started == ["sim"] and log.read_text().count("launching") == 1
    assert firsts == [1]  # once, although the launch and the health check both passed
    texts2, started2 = asyncio.run(run())
    assert texts2 == texts and started2 == []
    assert log.read_text().count("launching") == 1
    assert firsts == [1]  # nothing sent: never called
