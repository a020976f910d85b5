"""The image memo of the synthesis runtime: thread-safe and single-flight.

Regression: ``ModelSet.image_url`` memoised without a lock, so concurrent misses encoded the
same full image several times, and two threads evicting the same entry crashed a run with a
``KeyError``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from r2i.synthesis import runtime
from r2i.synthesis.runtime import ModelSet, OnceMemo


def test_concurrent_misses_compute_each_key_once() -> None:
    memo: OnceMemo[str, str] = OnceMemo(max_entries=100)
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(32)

    def compute(key: str) -> str:
        with lock:
            counts[key] += 1
        time.sleep(0.01)  # long enough for every other thread to miss too
        return key.upper()

    def worker(i: int) -> list[str]:
        start.wait()
        return [memo.get(f"k{(i + j) % 8}", lambda k=f"k{(i + j) % 8}": compute(k)) for j in range(8)]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(worker, range(32)))
    assert all(r == [f"K{(i + j) % 8}" for j in range(8)] for i, r in enumerate(results))
    assert counts == {f"k{i}": 1 for i in range(8)}
    assert memo.computed == 8


def test_eviction_under_contention_never_fails() -> None:
    memo: OnceMemo[int, bytes] = OnceMemo(max_entries=2, max_bytes=10**9)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(300):
                k = (i * 7 + j) % 16
                assert memo.get(k, lambda k=k: bytes([k]) * 10) == bytes([k]) * 10
        except BaseException as exc:  # pragma: no cover - the regression
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(memo) <= 2


def test_memo_bounded_by_bytes() -> None:
    memo: OnceMemo[int, bytes] = OnceMemo(max_entries=100, max_bytes=1000)
    for k in range(10):
        memo.get(k, lambda: b"x" * 300)
    assert len(memo) == 3


def test_failed_computation_is_not_stored_and_reaches_waiters() -> None:
    memo: OnceMemo[str, str] = OnceMemo()
    gate = threading.Event()

    def boom() -> str:
        gate.wait(5)
        raise ValueError("bad image")

    with ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(memo.get, "k", boom) for _ in range(8)]
        time.sleep(0.05)
        gate.set()
        for f in futs:
            with pytest.raises(ValueError, match="bad image"):
                f.result()
    assert memo.get("k", lambda: "ok") == "ok"


def test_model_set_encodes_a_shared_image_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    encodes = Counter()
    real = runtime.encode_png

    def counting(img: Image.Image, compress_level: int = 1) -> bytes:
        encodes[img.size] += 1
        time.sleep(0.01)
        return real(img, compress_level=compress_level)

    monkeypatch.setattr(runtime, "encode_png", counting)
    models = ModelSet({}, tmp_path / "cache")
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    barrier = threading.Barrier(24)

    def worker(_: int) -> str:
        barrier.wait()
        return models.image_url(img, "full-image", None)

    with ThreadPoolExecutor(24) as pool:
        urls = set(pool.map(worker, range(24)))
    assert len(urls) == 1 and urls.pop().startswith("data:image/png;base64,")
    assert encodes == {(64, 48): 1}
