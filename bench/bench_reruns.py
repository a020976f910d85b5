"""What a rerun costs after a small change: jobs, new model calls and servers started.

Runs the embedded default exactly as a user would (`snakemake -c 2 synthesis` in a fresh working
directory, the default config copied to `config/config.yaml` there, the simulated models launched
by the jobs), then makes one change at a time and reruns:

  touch    an image's mtime changes, its bytes do not
  edit     one pixel of one image changes
  add      a new image appears in the pool
  setting  synthesis.answers.min_agreement 0.75 -> 0.875 in config/config.yaml
  prompt   one line added to the distractors prompt

and reports, per change: the jobs Snakemake ran (by rule), the model calls that were new (new
entries in the call cache: each is one request that was sent), and how many model servers were
launched (lines in the endpoint logs). The simulator and the toy world are test doubles.

Usage: .venv/bin/python bench/bench_reruns.py [--repo DIR] [--workdir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from _env import bench_env  # noqa: E402

from tests.e2e import BIN, env  # noqa: E402

_ENV: dict[str, str] = {}


def _snakemake(repo: Path, wd: Path, *args: str) -> str:
    if not _ENV:
        _ENV.update(bench_env(env()))
    e = dict(_ENV)
    e["PYTHONPATH"] = str(repo / "workflow")
    res = subprocess.run([str(BIN / "snakemake"), "-s", str(repo / "Snakefile"), "-d", str(wd),
                          "-c", "2", *args], capture_output=True, text=True, env=e, timeout=7200)
    out = res.stdout + res.stderr
    if res.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{out[-5000:]}")
    return out


def _jobs(out: str) -> dict[str, int]:
    """Jobs that ran, by rule, from Snakemake's 'Finished jobid: N (Rule: name)' lines."""
    return dict(sorted(Counter(re.findall(r"Finished jobid: \d+ \(Rule: ([\w.-]+)\)", out)).items()))


def _calls(cache: Path) -> int:
    return sum(1 for _ in cache.glob("??/*.json")) if cache.exists() else 0


def _launches(wd: Path) -> int:
    return sum(p.read_text(errors="replace").count("[r2i] launching")
               for p in (wd / "results" / "logs").rglob("*endpoint*.log"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="r2i-reruns-"))
    (wd / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / "config" / "config.yaml", wd / "config" / "config.yaml")
    # the distractors prompt is a copy in the working directory, so the last step can edit it
    (wd / "prompts").mkdir(exist_ok=True)
    shipped = repo / "workflow" / "r2i" / "data" / "prompts" / "distractors.txt"
    if not shipped.exists():  # older checkouts kept the prompts under config/
        shipped = repo / "config" / "prompts" / "distractors.txt"
    shutil.copy(shipped, wd / "prompts" / "distractors.txt")
    cfg_path = wd / "config" / "config.yaml"
    cfg0 = yaml.safe_load(cfg_path.read_text()) or {}
    cfg0.setdefault("prompts", {})["distractors"] = "prompts/distractors.txt"
    cfg_path.write_text(yaml.safe_dump(cfg0, sort_keys=False))
    cache = wd / ".r2i-cache"
    print(f"workdir {wd}; code {repo}")

    t0 = time.perf_counter()
    out = _snakemake(repo, wd, "synthesis")
    rows: list[dict[str, Any]] = [{"change": "first run", "jobs": _jobs(out), "new_calls": _calls(cache),
                                   "servers": _launches(wd), "wall_s": round(time.perf_counter() - t0, 1)}]
    pool = wd / "resources" / "toy" / "pools" / "toy"
    scenes = sorted(pool.glob("toy_*.png"))

    def step(name: str, change: Any) -> None:
        calls, launches = _calls(cache), _launches(wd)
        change()
        t = time.perf_counter()
        out = _snakemake(repo, wd, "synthesis")
        rows.append({"change": name, "jobs": _jobs(out), "new_calls": _calls(cache) - calls,
                     "servers": _launches(wd) - launches, "wall_s": round(time.perf_counter() - t, 1)})
        print(rows[-1], flush=True)

    def touch() -> None:
        p = scenes[0]
        st = p.stat()
        import os

        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))

    def edit() -> None:
        from PIL import Image

        img = Image.open(scenes[1]).convert("RGB")
        img.putpixel((0, 0), tuple((v + 1) % 256 for v in img.getpixel((0, 0))))
        img.save(scenes[1])

    def add() -> None:
        from PIL import Image

        img = Image.open(scenes[2]).convert("RGB")
        img.putpixel((1, 1), tuple((v + 7) % 256 for v in img.getpixel((1, 1))))
        img.save(pool / "toy_added.png")

    def setting() -> None:
        p = wd / "config" / "config.yaml"
        cfg = yaml.safe_load(p.read_text())
        cfg.setdefault("synthesis", {}).setdefault("answers", {})["min_agreement"] = 0.875
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def prompt() -> None:
        p = wd / "prompts" / "distractors.txt"
        p.write_text(p.read_text() + "\nMake every wrong option as plausible as you can.\n")

    for name, fn in (("touch one image", touch), ("edit one image", edit), ("add one image", add),
                     ("change a threshold", setting), ("change a prompt", prompt)):
        step(name, fn)

    print(f"\n{'change':<20} {'jobs':<52} {'new model calls':>15} {'servers':>8} {'wall s':>7}")
    for r in rows:
        jobs = ", ".join(f"{k} {v}" for k, v in r["jobs"].items()) or "none"
        print(f"{r['change']:<20} {jobs:<52} {r['new_calls']:>15} {r['servers']:>8} {r['wall_s']:>7}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.workdir:
        shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
