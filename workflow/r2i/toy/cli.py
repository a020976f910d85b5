"""Command line: generate a toy world (TEST DOUBLE / OFFLINE DEMO data).

``python -m r2i.toy.cli --out DIR --seed 0 --scenes 8 --benchmark-scenes 4``
or ``python -m r2i.toy.cli --out DIR --size small`` (tiny / small / medium / large).
Explicit ``--scenes`` / ``--benchmark-scenes`` / ``--short-side`` override the size's values.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from .world import SIZES, generate_world, size_params


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m r2i.toy.cli",
        description="Generate the toy world (procedural scenes + ZoomBench-shaped benchmark), "
        "the offline stand-in for real image pools used with the simulated models.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--scenes", type=int, default=None, help="training-pool scenes")
    p.add_argument("--benchmark-scenes", type=int, default=None, help="held-out benchmark scenes")
    p.add_argument("--short-side", type=int, default=None, help="short image side in pixels")
    p.add_argument("--objects", type=int, nargs=2, default=(30, 45), metavar=("MIN", "MAX"),
                   help="objects per scene")
    args = p.parse_args(argv)

    kw = size_params(args.size)
    if args.scenes is not None:
        kw["n_scenes"] = args.scenes
    if args.benchmark_scenes is not None:
        kw["n_benchmark_scenes"] = args.benchmark_scenes
    if args.short_side is not None:
        kw["short_side"] = args.short_side
    t0 = time.perf_counter()
    index = generate_world(args.out, seed=args.seed, objects_per_scene=tuple(args.objects), **kw)
    dt = time.perf_counter() - t0
    n = len(index["scenes"])
    summary = {
        "out": args.out,
        "scenes": sum(s["split"] == "pool" for s in index["scenes"]),
        "benchmark_scenes": sum(s["split"] == "benchmark" for s in index["scenes"]),
        "objects": sum(s["n_objects"] for s in index["scenes"]),
        "benchmark_items": index["benchmark"]["n_items"],
        "seconds": round(dt, 2),
        "seconds_per_scene": round(dt / max(1, n), 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
