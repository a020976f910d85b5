"""Endpoint lifecycle and crash safety with real processes.

(b) a client killed mid-run re-sends zero completed calls after a restart (proved with the
server's counters); (c) launched endpoints start, become healthy and leave no process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from r2i.client import CallCache, EndpointConfig, EndpointStartError, open_endpoint
from r2i.sim.brains import EchoBrain

PY = sys.executable
SIM = f"{PY} -m r2i.sim.server --port {{port}}"

CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from r2i.client import CallCache, EndpointConfig, ModelClient, seed_for, user_message

    base, cache_dir, n_calls, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    async def main():
        cfg = EndpointConfig(name="sim", base_url=base, max_concurrency=4, timeout_s=20)
        async with ModelClient(cfg, cache=CallCache(cache_dir)) as client:
            results = await asyncio.gather(*(
                client.chat(model="sim-student", messages=[user_message(f"item {i}")], n=2,
                            seed=seed_for(f"item-{i}", "answer"), temperature=0.8)
                for i in range(n_calls)))
        with open(out, "w") as fh:
            json.dump({"texts": [r.texts for r in results], "stats": client.stats.to_dict()}, fh)

    asyncio.run(main())
    """
)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        r.raise_for_status()
        return await r.json()


async def settled_stats(base: str) -> dict[str, Any]:
    """Server counters once nothing is in flight and they stopped changing.

    Bytes a killed client had already sent may still be parsed by the server after the kill;
    reading too early would attribute those requests to the next run.
    """
    prev = None
    for _ in range(100):
        cur = await get_json(base + "/stats")
        if prev is not None and cur["in_flight"] == 0 and cur["requests"] == prev["requests"]:
            return cur
        prev = cur
        await asyncio.sleep(0.1)
    raise AssertionError(f"server counters never settled: {prev}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for a (non-reaping) init counts as gone
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


async def test_killed_client_resends_no_completed_call(tmp_path: Path) -> None:
    """(b) SIGKILL the client after some calls completed; the restart sends only the rest."""
    n_calls = 40
    cache_dir = tmp_path / "cache"
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    cfg = EndpointConfig(name="sim", launch=f"{SIM} --latency 0.15", startup_timeout_s=60)
    async with open_endpoint(cfg, tmp_path / "server.log") as base:
        cmd = [PY, str(script), base, str(cache_dir), str(n_calls), str(tmp_path / "out1.json")]
        proc = subprocess.Popen(cmd)
        try:
            deadline = time.monotonic() + 30
            while (not cache_dir.exists() or len(CallCache(cache_dir)) < 12) \
                    and time.monotonic() < deadline:
                assert proc.poll() is None, "client finished before it could be killed"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert not (tmp_path / "out1.json").exists()
        done_before = len(CallCache(cache_dir))
        assert 12 <= done_before < n_calls
        received_before = (await settled_stats(base))["requests"]
        assert received_before >= done_before  # in-flight ones were received, not completed

        cmd[-1] = str(tmp_path / "out2.json")
        subprocess.run(cmd, check=True, timeout=60)
        stats = await get_json(base + "/stats")

    out = json.loads((tmp_path / "out2.json").read_text())
    # The restarted run sent exactly the calls that had not completed before the kill.
    assert stats["requests"] - received_before == n_calls - done_before
    assert out["stats"]["requests_sent"] == n_calls - done_before
    assert out["stats"]["cache_hits"] == done_before
    from r2i.client import seed_for, user_message

    expected = [EchoBrain().complete("sim-student", [user_message(f"item {i}")], 2,
                                     seed_for(f"item-{i}", "answer"), {})
                for i in range(n_calls)]
    assert out["texts"] == expected
    assert len(CallCache(cache_dir)) == n_calls


async def test_launch_starts_and_stops_the_server(tmp_path: Path) -> None:
    """(c) launch mode: healthy server on a free port, whole process group gone afterwards."""
    # The shell wrapper forks the server as a grandchild, as vLLM launch scripts do.
    launch = f"sh -c '{SIM} --seed 5 & wait'"
    cfg = EndpointConfig(name="sim", launch=launch, startup_timeout_s=60)
    log = tmp_path / "logs" / "server.log"
    async with open_endpoint(cfg, log) as base:
        assert base.startswith("http://127.0.0.1:")
        health = await get_json(base + "/health")
        models = await get_json(base + "/v1/models")
        pid = health["pid"]
        assert pid_alive(pid) and health["simulated"] is True
        assert "sim-teacher-a" in [m["id"] for m in models["data"]]
    assert wait_gone(pid), "server process survived the endpoint context"
    with pytest.raises(aiohttp.ClientError):
        await get_json(base + "/health")
    assert "launching" in log.read_text()


async def test_launch_failure_reports_log_tail_fast(tmp_path: Path) -> None:
    launch = f"{PY} -c \"import sys; print('boom: no weights for port {{port}}'); sys.exit(3)\""
    cfg = EndpointConfig(name="bad", launch=launch, startup_timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(EndpointStartError, match="boom: no weights") as ei:
        async with open_endpoint(cfg, tmp_path / "bad.log"):
            pass
    assert time.monotonic() - t0 < 20 and "exited with code 3" in str(ei.value)


async def test_launch_startup_timeout_kills_process(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    launch = f"echo $$ > {marker}; exec sleep 60 # {{port}}"
    cfg = EndpointConfig(name="slow", launch=launch, startup_timeout_s=1.0)
    with pytest.raises(EndpointStartError, match="not healthy after 1 s"):
        async with open_endpoint(cfg, tmp_path / "slow.log"):
            pass
    assert wait_gone(int(marker.read_text()))


async def test_base_url_health_fallback_to_models() -> None:
    """A server without /health (404) is accepted when GET /v1/models answers."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        async with open_endpoint(EndpointConfig(name="ext", base_url=url,
                                                startup_timeout_s=5)) as base:
            assert base == url[:-3]
        down = EndpointConfig(name="down", base_url="http://127.0.0.1:9/", startup_timeout_s=0.5)
        with pytest.raises(EndpointStartError, match="not healthy"):
            async with open_endpoint(down):
                pass
    finally:
        await runner.cleanup()


async def test_default_launch_log_is_removed_after_clean_stop() -> None:
    import tempfile

    name = f"logcheck{os.getpid()}"
    pattern = f"r2i-endpoint-{name}-*.log"
    cfg = EndpointConfig(name=name, launch=SIM, startup_timeout_s=60)
    async with open_endpoint(cfg) as base:
        assert (await get_json(base + "/health"))["status"] == "ok"
        assert len(list(Path(tempfile.gettempdir()).glob(pattern))) == 1
    assert list(Path(tempfile.gettempdir()).glob(pattern)) == []
