"""Cache-key serialisation of a request with an inline image: ``r2i.client.cache.canonical_json``
against the plain ``json.dumps`` it must equal byte for byte, measured in the same run.

Every model request is serialised once (the same bytes are hashed for the cache key and sent as
the body). ``json.dumps`` scans a multi-megabyte base64 image string at ~0.2 GB/s on these
machines; ``canonical_json`` splices escape-free long strings in as bytes and keeps the quoted
bytes of recent ones, so the same image in the next request costs a dictionary lookup.

Usage: .venv/bin/python bench/bench_canonical_json.py [--mb 2] [--repeat 30]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from r2i.client import cache


def per_call_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=2.0, help="size of the image's data URL")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    url = "data:image/png;base64," + base64.b64encode(os.urandom(int(args.mb * 0.75e6))).decode()
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What colour is the mug?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]
    assert cache.canonical_json(msgs) == cache._plain_json(msgs)
    ref = per_call_ms(lambda: cache._plain_json(msgs), args.repeat)
    cache._QUOTED.clear()
    t0 = time.perf_counter()
    cache.canonical_json(msgs)
    first = (time.perf_counter() - t0) * 1e3
    again = per_call_ms(lambda: cache.canonical_json(msgs), args.repeat)
    print(f"request with a {len(url) / 1e6:.1f} MB inline image: json.dumps {ref:.2f} ms; "
          f"canonical_json {first:.2f} ms the first time, {again:.2f} ms for the same image again")
    print(f"ratio (json.dumps / canonical_json): first {ref / first:.1f}x, again {ref / again:.0f}x")


if __name__ == "__main__":
    main()
