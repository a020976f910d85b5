"""Client throughput benchmark against the simulated server (EchoBrain, fixed latency).

With a server that takes exactly ``L`` seconds per request and ``C`` requests in flight, Little's
law bounds throughput by ``C / L``. The ratio achieved/limit therefore measures the client's (and
the loopback server's) own overhead: payload building, JSON, HTTP, cache writes. Every run uses
a fresh temporary cache, so every request is really sent and recorded.

    .venv/bin/python bench/bench_client.py                # C = 64, 256; latency 1.0 s; 8*C reqs
    .venv/bin/python bench/bench_client.py -c 16 --latency 0.2 --waves 4
    .venv/bin/python bench/bench_client.py --cache-root /dev/shm   # separate out file-system cost

The server runs as a separate process (as in production), launched through ``open_endpoint``.
Besides the table, the CPU time per request of client and server and the p50/p90 request latency
are printed: on a shared machine the ratio depends on what else runs, the CPU cost does not.
No assertions: the table is the result; the project's goal is a ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from r2i.client import (
    CallCache,
    ClientStats,
    EndpointConfig,
    ModelClient,
    open_endpoint,
    run_async,
)

MODEL = "sim-teacher-a"


def default_cache_root() -> str:
    """``results/bench-tmp`` of the repository: the file system the pipeline's cache lives on
    (a machine's /tmp can be much slower or faster for file creation than the results disk)."""
    return str(Path(__file__).resolve().parent.parent / "results" / "bench-tmp")


def _proc_cpu_s(pid: int | None) -> float:
    """User+system CPU seconds of process ``pid`` (Linux /proc; 0 if unavailable)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _drive(base_url: str, concurrency: int, n_requests: int, timeout_s: float,
                 cache_root: str | None = None, warmup: int = 0) -> dict[str, Any]:
    cfg = EndpointConfig(name="bench", base_url=base_url, max_concurrency=concurrency,
                         timeout_s=timeout_s, max_retries=2)
    root = cache_root or default_cache_root()
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="r2i-bench-cache-", dir=root) as cache_dir:
        stats = ClientStats()
        client = ModelClient(cfg, cache=CallCache(cache_dir), stats=stats)
        # Messages are built up front: the benchmark measures the client, not prompt assembly.
        def job(tag: str, i: int) -> list[dict[str, Any]]:
            return [{"role": "user", "content": [{"type": "text", "text": f"{tag} {i}"}]}]

        jobs = [job("benchmark request", i) for i in range(n_requests)]
        if warmup:
            # Opens the connection pool (C TCP handshakes on both sides take a few hundred ms
            # at C=256), so the timed part measures steady state, which is what C/L describes.
            await asyncio.gather(*(client.chat(model=MODEL, messages=job("warm-up", i), seed=-1 - i)
                                   for i in range(warmup)))
        cpu0 = _self_cpu_s()
        t0 = time.perf_counter()
        try:
            results = await asyncio.gather(*(
                client.chat(model=MODEL, messages=m, n=1, seed=i, temperature=0.0,
                            max_tokens=64)
                for i, m in enumerate(jobs)
            ))
        finally:
            wall = time.perf_counter() - t0
            cpu = _self_cpu_s() - cpu0
            await client.aclose()
    assert len(results) == n_requests and not any(r.cached for r in results)
    lat = sorted(r.latency_s for r in results)
    return {"wall_s": wall, "client_cpu_s": cpu, "stats": stats.to_dict(), "warmup": warmup,
            "p50_s": lat[len(lat) // 2], "p90_s": lat[int(len(lat) * 0.9)]}


async def _run(concurrencies: Sequence[int], latency: float, waves: int,
               requests: int | None, log_path: str | None,
               cache_root: str | None, warmup_waves: int) -> list[dict[str, Any]]:
    launch = f"{sys.executable} -m r2i.sim.server --port {{port}} --latency {latency}"
    server_cfg = EndpointConfig(name="bench-sim", launch=launch, startup_timeout_s=60)
    rows: list[dict[str, Any]] = []
    async with open_endpoint(server_cfg, log_path) as base_url:
        async with aiohttp.ClientSession() as s, s.get(base_url + "/health") as r:
            server_pid = (await r.json()).get("pid")
        for c in concurrencies:
            n = requests if requests is not None else waves * c
            srv0 = _proc_cpu_s(server_pid)
            out = await _drive(base_url, c, n, timeout_s=max(30.0, 10 * latency),
                               cache_root=cache_root, warmup=warmup_waves * c)
            srv_cpu = _proc_cpu_s(server_pid) - srv0
            achieved = n / out["wall_s"]
            limit = c / latency if latency > 0 else float("inf")
            rows.append({
                "concurrency": c, "latency_s": latency, "requests": n,
                "wall_s": out["wall_s"], "achieved_rps": achieved, "limit_rps": limit,
                "ratio": achieved / limit, "retries": out["stats"]["retries"],
                "p50_s": out["p50_s"], "p90_s": out["p90_s"],
                "client_cpu_ms": 1e3 * out["client_cpu_s"] / n,
                "server_cpu_ms": 1e3 * srv_cpu / n,
                "loadavg_1m": os.getloadavg()[0], "warmup": warmup_waves * c,
            })
    return rows


def run_benchmark(concurrencies: Sequence[int] = (64, 256), latency: float = 1.0,
                  waves: int = 8, requests: int | None = None,
                  log_path: str | None = None, uvloop: bool = True,
                  cache_root: str | None = None,
                  warmup_waves: int = 1) -> list[dict[str, Any]]:
    """Run the benchmark and return one row per concurrency (see :func:`format_table`).

    ``warmup_waves * C`` untimed requests go first on the same client (also fresh, uncached).
    """
    return run_async(
        _run(concurrencies, latency, waves, requests, log_path, cache_root, warmup_waves),
        use_uvloop=uvloop,
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The result table, then per-request diagnostics (latency percentiles, CPU, load)."""
    head = (f"{'C':>5} {'latency s':>9} {'requests':>8} {'wall s':>8} {'req/s':>9} "
            f"{'C/latency':>9} {'ratio':>6}")
    lines = [head, "-" * len(head)]
    for r in rows[:1]:
        waves = r["warmup"] // r["concurrency"]
        lines.insert(0, f"(timed after {waves} untimed warm-up wave(s) of C requests that open "
                        "the connection pool)" if waves else
                     "(no warm-up: the timed part includes opening C connections)")
    for r in rows:
        lines.append(
            f"{r['concurrency']:>5} {r['latency_s']:>9.3f} {r['requests']:>8} {r['wall_s']:>8.2f} "
            f"{r['achieved_rps']:>9.1f} {r['limit_rps']:>9.1f} {r['ratio']:>6.3f}"
        )
    lines.append("")
    diag = (f"{'C':>5} {'p50 s':>7} {'p90 s':>7} {'retries':>7} {'client CPU ms/req':>17} "
            f"{'server CPU ms/req':>17} {'load 1m':>7}")
    lines += [diag, "-" * len(diag)]
    for r in rows:
        lines.append(
            f"{r['concurrency']:>5} {r['p50_s']:>7.3f} {r['p90_s']:>7.3f} {r['retries']:>7} "
            f"{r['client_cpu_ms']:>17.3f} {r['server_cpu_ms']:>17.3f} {r['loadavg_1m']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("-c", "--concurrency", type=int, nargs="+", default=[64, 256])
    p.add_argument("--latency", type=float, default=1.0, help="server latency per request (s)")
    p.add_argument("--waves", type=int, default=8, help="requests = waves * C")
    p.add_argument("--requests", type=int, default=None, help="fixed request count (overrides)")
    p.add_argument("--server-log", default=None, help="where the server's output goes")
    p.add_argument("--no-uvloop", action="store_true", help="client on the stdlib asyncio loop")
    p.add_argument("--cache-root", default=None,
                   help="where the fresh temporary caches go (default: results/bench-tmp)")
    p.add_argument("--warmup-waves", type=int, default=1,
                   help="untimed waves of C requests first, to open connections (0 = cold)")
    args = p.parse_args(argv)
    rows = run_benchmark(args.concurrency, args.latency, args.waves, args.requests,
                         args.server_log, uvloop=not args.no_uvloop, cache_root=args.cache_root,
                         warmup_waves=args.warmup_waves)
    print(format_table(rows))


if __name__ == "__main__":
    main()
