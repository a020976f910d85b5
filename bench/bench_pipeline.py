"""Benchmark of the synthesis pipeline on one toy-world input, against references measured in the same run.

1. Model calls: the whole synthesis DAG (``snakemake -c JOBS``) runs against one simulated server
   with a fixed per-request latency L. Its wall time W is compared with the time the same number
   of requests N needs when the server is kept exactly at its concurrency limit (Little's law:
   N * L / (JOBS * C), C being each job's endpoint concurrency). ratio = reference / W (1.0 = the
   pipeline keeps the server saturated the whole time; lower = dependency stalls, image work,
   job start-up).
2. CPU image work: the same images and the same boxes the objects stage found, through
   ``r2i.images`` and through a plain Pillow loop doing the same operations
   (``bench/bench_images.py``).

The simulated server and toy world are test doubles; the workflow and client are the real ones.

Usage: .venv/bin/python bench/bench_pipeline.py [--size tiny|small] [--latency 0.2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_images import bench_objects  # noqa: E402

from tests.e2e import SimServer, snakemake, tiny_config  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "medium"])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.2, help="simulated seconds per request")
    ap.add_argument("--concurrency", type=int, default=16, help="endpoint max_concurrency per job")
    ap.add_argument("--jobs", type=int, default=2, help="snakemake -c")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    wd = Path(args.workdir or tempfile.mkdtemp(prefix="r2i-bench-"))
    base = dict(toy_world__size=args.size, manifest__shards=args.shards)
    print(f"workdir {wd}; toy world '{args.size}', {args.shards} shards")
    snakemake(wd, "--until", "manifest", config=tiny_config(wd, **base))

    limit = args.concurrency * args.jobs
    server = SimServer(wd / "resources/toy", wd / "sim.log", latency=args.latency, max_concurrency=limit)
    try:
        cfg = tiny_config(wd, base_url=server.url, endpoints__sim__max_concurrency=args.concurrency, **base)
        t0 = time.perf_counter()
        snakemake(wd, "-c", str(args.jobs), config=cfg, timeout=7200)
        wall = time.perf_counter() - t0
        stats = server.stats()
    finally:
        server.close()
    n = int(stats["requests"])
    ref = n * args.latency / limit
    print("\nModel calls: pipeline vs the same requests at the server's concurrency limit")
    print(f"{'requests':>9} {'latency s':>9} {'limit':>6} {'pipeline s':>11} {'reference s':>12} {'ratio':>6}")
    print(f"{n:>9} {args.latency:>9.3f} {limit:>6} {wall:>11.1f} {ref:>12.1f} {ref / wall:>6.2f}")
    print(f"(429s from the server: {stats['throttled']}; max requests in flight: {stats['max_in_flight']})")

    boxes: dict[Path, list[tuple[int, int, int, int]]] = {}
    for f in sorted((wd / "results/toy/shards").glob("*/crops.parquet")):
        for rec, status in zip(
            pq.read_table(f, columns=["record"]).column("record").to_pylist(),
            pq.read_table(f, columns=["status"]).column("status").to_pylist(),
            strict=True,
        ):
            if status == "kept":
                r = json.loads(rec)
                boxes.setdefault(Path(r["image_path"]), []).append(tuple(int(v) for v in r["crop_box"]))
    k = min(len(b) for b in boxes.values())
    boxes = {p: b[:k] for p, b in boxes.items()}  # same number of boxes per image for the table
    print()
    bench_objects(sorted(boxes), boxes, rounds=1)


if __name__ == "__main__":
    main()
