"""Compare two synthesis runs' datasets: same rows, same item ids, same answers, same pixels.

Usage: python bench/compare_datasets.py RUN_DIR_A RUN_DIR_B [--run toy] [--new-fields-ok]

``--new-fields-ok``: extra_info fields that are absent (null) in every row of A (fields added
since A was made, e.g. the prompt-budget figures) are listed but not counted as differences.

Image bytes may differ (an encoder change); the decoded pixels must not. Exit status 1 on any
difference, with the differences listed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image


def _rows(run_dir: Path, run: str) -> dict[str, dict]:
    out = {}
    for split in ("train", "val"):
        for row in pq.read_table(run_dir / "results" / run / "dataset" / f"{split}.parquet").to_pylist():
            row["split"] = split
            out[row["extra_info"]["item_id"]] = row
    return out


def _info(row: dict, run_dir: Path) -> dict:
    """extra_info without the row index, with paths relative to the run directory."""
    info = {f: v for f, v in row["extra_info"].items() if f != "index"}
    for f, v in info.items():
        if isinstance(v, str) and v.startswith(str(run_dir.resolve()) + "/"):
            info[f] = v[len(str(run_dir.resolve())) + 1:]
    return info


def _pixels(data: bytes) -> str:
    im = Image.open(io.BytesIO(data))
    im.load()
    return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


def new_fields(a: Path, b: Path, run: str = "toy") -> set[str]:
    """extra_info fields of B that no row of A has a value for."""
    rows_a, rows_b = _rows(a, run).values(), _rows(b, run).values()
    keys = set().union(*(r["extra_info"].keys() for r in rows_b)) if rows_b else set()
    return {k for k in keys if all(r["extra_info"].get(k) is None for r in rows_a)}


def compare(a: Path, b: Path, run: str = "toy", ignore: frozenset[str] = frozenset()) -> list[str]:
    ra, rb = _rows(a, run), _rows(b, run)
    problems = []
    if ra.keys() != rb.keys():
        problems.append(f"item ids differ: only in A {sorted(ra.keys() - rb.keys())[:10]}, "
                        f"only in B {sorted(rb.keys() - ra.keys())[:10]}")
    for k in sorted(ra.keys() & rb.keys()):
        x, y = ra[k], rb[k]
        for field in ("split", "prompt", "reward_model", "data_source", "ability"):
            if x[field] != y[field]:
                problems.append(f"{k}: {field} differs")
        ex = {f: v for f, v in _info(x, a).items() if f not in ignore}
        ey = {f: v for f, v in _info(y, b).items() if f not in ignore}
        if ex != ey:
            diff = sorted(f for f in ex.keys() | ey.keys() if ex.get(f) != ey.get(f))
            problems.append(f"{k}: extra_info differs in {diff}")
        if _pixels(x["images"][0]["bytes"]) != _pixels(y["images"][0]["bytes"]):
            problems.append(f"{k}: image pixels differ")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--run", default="toy")
    ap.add_argument("--new-fields-ok", action="store_true")
    args = ap.parse_args()
    ignore = frozenset(new_fields(args.a, args.b, args.run)) if args.new_fields_ok else frozenset()
    if ignore:
        print(f"extra_info fields new since A (not compared): {', '.join(sorted(ignore))}")
    problems = compare(args.a, args.b, args.run, ignore)
    n = len(_rows(args.a, args.run))
    if problems:
        print(f"{len(problems)} differences:\n" + "\n".join(problems[:50]))
        sys.exit(1)
    print(f"identical: {n} rows, same item ids, splits, prompts, answers, provenance and pixels")


if __name__ == "__main__":
    main()
