"""Smoke test of bench/bench_client.py with tiny numbers (no timing assertions)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_client.py"


def test_benchmark_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_client", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run_benchmark((2, 4), latency=0.05, waves=2, cache_root=str(tmp_path))
    assert [r["concurrency"] for r in rows] == [2, 4]
    assert [r["requests"] for r in rows] == [4, 8]
    assert all(r["achieved_rps"] > 0 and r["ratio"] > 0 for r in rows)
    table = mod.format_table(rows)
    assert "ratio" in table and "client CPU" in table and "warm-up" in table
    assert len(table.splitlines()) == 10  # note, 2 x (header, rule, 2 rows), blank
    assert list(tmp_path.iterdir()) == []  # temporary caches removed
