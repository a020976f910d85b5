"""The request limit shared by jobs on one machine (r2i.client.slots).

Several processes (as parallel shard jobs would be) drive one standing server through
``ModelClient`` with the same ``max_concurrency``; the server's own in-flight counter must never
exceed it. Without the shared limit the same load exceeds it, so the test can fail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from r2i.client.slots import SharedSlots

from .e2e import SimServer, env

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from r2i.client import EndpointConfig, ModelClient
    from r2i.client.slots import SharedSlots

    url, slot_dir, c, n, tag, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1"

    async def main():
        cfg = EndpointConfig(name="sim", base_url=url, max_concurrency=c, api_key_env="R2I_TEST_API_KEY")
        slots = SharedSlots(slot_dir, c) if shared else None
        async with ModelClient(cfg, shared_slots=slots) as client:
            msgs = lambda i: [{"role": "user", "content": f"{tag} request {i}"}]
            await asyncio.gather(*(client.chat("m", msgs(i), seed=i) for i in range(n)))
        print("done", flush=True)

    asyncio.run(main())
    """
)


def _run_workers(url: str, slot_dir: Path, *, c: int, n: int, k: int, shared: bool) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(slot_dir), str(c), str(n),
                               f"w{i}", "1" if shared else "0"], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(k)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "done" in out, err[-2000:]


@pytest.fixture()
def server(tmp_path: Path):
    srv = SimServer(None, tmp_path / "sim.log", latency=0.15)  # no world: the echo brain
    yield srv
    srv.close()


def _reset(server: SimServer) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(server.url + "/stats/reset", method="POST"), timeout=5)


def test_parallel_jobs_share_one_limit(server: SimServer, tmp_path: Path) -> None:
    c = 6
    _reset(server)
    _run_workers(server.url, tmp_path / "slots", c=c, n=40, k=4, shared=True)
    st = server.stats()
    assert st["requests"] == 160
    assert st["max_in_flight"] <= c, st
    assert st["max_in_flight"] >= c - 1, st  # and the limit is used, not starved

    # The same load with a per-job limit only: 4 jobs x 6 in flight.
    _reset(server)
    _run_workers(server.url, tmp_path / "slots2", c=c, n=40, k=4, shared=False)
    assert server.stats()["max_in_flight"] > c


def test_killed_holder_frees_its_slots(tmp_path: Path) -> None:
    d = tmp_path / "slots"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import asyncio, time
            from r2i.client.slots import SharedSlots
            async def main():
                s = SharedSlots({str(d)!r}, 3)
                for _ in range(3):
                    await s.acquire()
                print("holding", flush=True)
                time.sleep(600)
            asyncio.run(main())
        """)], stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"

        async def try_get() -> int:
            s = SharedSlots(d, 3, poll_s=0.01)
            try:
                return await asyncio.wait_for(s.acquire(), 0.3)
            finally:
                s.close()

        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(try_get())  # all three slots are held
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        t0 = time.monotonic()
        assert asyncio.run(try_get()) in (0, 1, 2)
        assert time.monotonic() - t0 < 0.3
    finally:
        holder.kill()


def test_waiters_are_served_in_order_and_cancellation_is_safe(tmp_path: Path) -> None:
    async def main() -> list[int]:
        s = SharedSlots(tmp_path / "s", 1, poll_s=0.001)
        first = await s.acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            slot = await s.acquire()
            order.append(i)
            await asyncio.sleep(0.005)
            s.release(slot)

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(5)]
        await asyncio.sleep(0.02)
        tasks[2].cancel()
        s.release(first)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert s.held == 0
        s.close()
        return order

    assert asyncio.run(main()) == [0, 1, 3, 4]


def test_unusable_directory_disables_the_shared_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = SharedSlots(blocker / "sub", 2)  # cannot create a directory under a file
    assert s.disabled and "disabled" in caplog.text
    assert asyncio.run(s.acquire()) == -1
