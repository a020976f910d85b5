"""The simulated OpenAI-compatible server (test double): protocol, validation, faults, counters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest

from r2i.sim.brains import SIM_MODELS, Brain, EchoBrain, last_user_text
from r2i.sim.server import SimServer, SimSettings, build_brain, serve

BODY: dict[str, Any] = {
    "model": "sim-teacher-b",
    "messages": [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "How many red squares?"},
        ]},
    ],
    "n": 3,
    "seed": 10,
    "temperature": 0.7,
    "top_p": 0.9,
    "max_tokens": 32,
}


async def post(session: aiohttp.ClientSession, url: str, body: Any,
               timeout: float = 10) -> tuple[int, bytes, dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url + "/v1/chat/completions", data=data,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        return r.status, await r.read(), dict(r.headers)


def test_echo_brain_is_deterministic_per_sample_seed() -> None:
    brain = EchoBrain()
    assert isinstance(brain, Brain)
    three = brain.complete("m", BODY["messages"], 3, 10, {})
    singles = [brain.complete("m", BODY["messages"], 1, 10 + i, {})[0] for i in range(3)]
    assert three == singles and len(set(three)) == 3
    assert three[0].startswith("echo[m] seed=10 ") and "images=1" in three[0]
    assert "How many red squares?" in three[0]
    assert brain.complete("m", BODY["messages"], 1, None, {}) == \
        brain.complete("m", BODY["messages"], 1, None, {})
    assert last_user_text([{"role": "user", "content": "plain"}]) == ("plain", 0)


def test_build_brain_defaults_to_echo() -> None:
    assert isinstance(build_brain(None), EchoBrain)


async def test_routes_and_completion_shape() -> None:
    async with serve() as sim, aiohttp.ClientSession() as s:
        url = sim.base_url
        assert url
        async with s.get(url + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == list(SIM_MODELS)
        status, raw, headers = await post(s, url, BODY)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        resp = json.loads(raw)
        assert resp["object"] == "chat.completion" and resp["model"] == "sim-teacher-b"
        assert [c["index"] for c in resp["choices"]] == [0, 1, 2]
        texts = [c["message"]["content"] for c in resp["choices"]]
        assert texts == EchoBrain().complete("sim-teacher-b", BODY["messages"], 3, 10, {})
        u = resp["usage"]
        # len("You are a test.")//4 + 256 per image + len(question)//4
        assert u["prompt_tokens"] == 15 // 4 + 256 + len("How many red squares?") // 4
        assert u["completion_tokens"] == sum(len(t) // 4 for t in texts)
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        async with s.get(url + "/stats") as r:
            st = await r.json()
        assert st["requests"] == 1 and st["completed"] == 1
        assert st["per_model"] == {"sim-teacher-b": {"requests": 1, "completed": 1}}
        assert st["auth"]["missing"] == 1
        async with s.post(url + "/stats/reset") as r:
            assert r.status == 200
        async with s.get(url + "/stats") as r:
            assert (await r.json())["requests"] == 0


@pytest.mark.parametrize("patch", [
    {"model": ""}, {"messages": []}, {"messages": [{"content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
    {"n": 0}, {"n": 1000}, {"n": True}, {"seed": "1"}, {"temperature": 3},
    {"top_p": -1}, {"max_tokens": 0},
])
async def test_validation_rejects_bad_requests(patch: dict[str, Any]) -> None:
    async with serve() as sim, aiohttp.ClientSession() as s:
        assert sim.base_url
        status, raw, _ = await post(s, sim.base_url, {**BODY, **patch})
        assert status == 400 and "error" in json.loads(raw)
        status, _, _ = await post(s, sim.base_url, b"{nope")
        assert status == 400
        assert sim.bad_requests == 2 and sim.completed == 0


async def test_fault_injection_is_seeded_and_counted() -> None:
    settings = SimSettings(fault_429=0.2, fault_500=0.2, fault_malformed=0.2,
                           fault_truncated=0.2, seed=7)

    async def statuses() -> tuple[list[str], dict[str, Any]]:
        out = []
        async with serve(settings=settings) as sim, aiohttp.ClientSession() as s:
            assert sim.base_url
            for _ in range(40):
                status, raw, headers = await post(s, sim.base_url, BODY)
                try:
                    json.loads(raw)
                    ok = "json"
                except ValueError:
                    ok = "bad"
                if status == 429:
                    assert headers["Retry-After"] == "0"
                out.append(f"{status}:{ok}")
            return out, sim.stats()

    a, st = await statuses()
    b, _ = await statuses()
    assert a == b  # same seed, same fault sequence
    f = st["faults"]
    assert a.count("429:json") == f["429"] and a.count("500:json") == f["500"]
    assert a.count("200:bad") == f["malformed"] + f["truncated"]
    assert a.count("200:json") == st["completed"] and min(f["429"], f["500"]) > 0
    assert st["requests"] == 40 and sum(f.values()) + st["completed"] == 40


async def test_timeout_fault_does_not_block_shutdown() -> None:
    settings = SimSettings(fault_timeout=1.0, hang_s=3600)
    async with aiohttp.ClientSession() as s:  # outlives the server
        t0 = time.monotonic()
        async with serve(settings=settings) as sim:
            assert sim.base_url
            with pytest.raises(asyncio.TimeoutError):
                await post(s, sim.base_url, BODY, timeout=0.2)
            # A hung request still in flight while the server stops.
            pending = asyncio.ensure_future(post(s, sim.base_url, BODY, timeout=30))
            await asyncio.sleep(0.2)
            assert sim.faults["timeout"] == 2
        assert time.monotonic() - t0 < 5
        try:
            status: int | None = (await pending)[0]
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = None
        assert status != 200  # "shutting down" or a closed connection, never a completion


async def test_max_concurrency_throttles_with_429() -> None:
    settings = SimSettings(latency=0.2, max_concurrency=2)
    async with serve(settings=settings) as sim, aiohttp.ClientSession() as s:
        assert sim.base_url
        res = await asyncio.gather(*(post(s, sim.base_url, BODY) for _ in range(5)))
        codes = sorted(r[0] for r in res)
        assert codes == [200, 200, 429, 429, 429]
        assert sim.throttled == 3 and sim.max_in_flight == 2


async def test_latency_is_applied() -> None:
    async with serve(settings=SimSettings(latency=0.2, latency_jitter=0.05)) as sim, \
            aiohttp.ClientSession() as s:
        assert sim.base_url
        t0 = time.monotonic()
        status, _, _ = await post(s, sim.base_url, BODY)
        assert status == 200 and time.monotonic() - t0 >= 0.15


async def test_brain_errors_become_500() -> None:
    class Broken:
        run_in_thread = True

        def complete(self, model: str, messages: list[dict[str, Any]], n: int,
                     seed: int | None, params: dict[str, Any]) -> list[str]:
            return ["too few"]

    async with serve(Broken()) as sim, aiohttp.ClientSession() as s:
        assert sim.base_url
        status, raw, _ = await post(s, sim.base_url, BODY)
        assert status == 500 and b"brain error" in raw and sim.brain_errors == 1


async def test_required_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2I_SIM_TEST_KEY", "sk-sim-abcdef")
    async with serve(settings=SimSettings(api_key_env="R2I_SIM_TEST_KEY")) as sim, \
            aiohttp.ClientSession() as s:
        assert sim.base_url
        status, raw, _ = await post(s, sim.base_url, BODY)
        assert status == 401 and b"sk-sim" not in raw
        async with s.post(sim.base_url + "/v1/chat/completions", json=BODY,
                          headers={"Authorization": "Bearer sk-sim-abcdef"}) as r:
            assert r.status == 200
        assert sim.auth == {"present": 1, "missing": 1, "rejected": 1}
    monkeypatch.delenv("R2I_SIM_TEST_KEY")
    with pytest.raises(ValueError, match="R2I_SIM_TEST_KEY"):
        SimServer(settings=SimSettings(api_key_env="R2I_SIM_TEST_KEY"))


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        SimSettings(fault_429=0.7, fault_500=0.7)
    with pytest.raises(ValueError):
        SimSettings(latency=-1)


def test_cli_help_names_it_a_test_double() -> None:
    out = subprocess.run([sys.executable, "-m", "r2i.sim.server", "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert "test double" in out and "--fault-truncated" in out and "--max-concurrency" in out
    assert "--latency-jitter" in out and "--world" in out
