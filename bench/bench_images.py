"""Benchmark of the pipeline's per-object image work: r2i.images against a plain Pillow loop.

Per image: decode. Per box (K per image): micro-crop + 2x Lanczos -> PNG -> data URL (what the
teachers see); expand the box 5% + 5 px red rectangle on the full image -> JPEG q95 -> data URL
(what models see) and -> PNG (the dataset blob).

Three implementations run on the same generated images in the same process:

* ``ours``: the r2i.images functions, with their default settings;
* ``plain-same``: a naive Pillow loop with the *same* encoder settings (PNG level 1, JPEG 4:4:4);
  its outputs are checked byte-identical to ours, so the ratio measures library overhead only;
* ``plain-default``: the same loop with Pillow's default encoder settings (PNG level 6, JPEG
  4:2:0), i.e. what a script written without thought about encoders would do.

``--manifest`` also times the manifest's per-file check (full decode vs JPEG draft) and the scan
in-process, with threads (what scan_pools does) and with a process pool.

Usage: .venv/bin/python bench/bench_images.py [--images 8] [--boxes 3] [--width 2048 --height 2560]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageOps

from r2i import images, manifest

STAGES = ["decode", "crop+2x", "crop png", "box overlay", "full jpeg", "full png", "data url"]
Box = tuple[int, int, int, int]


# ------------------------------------------------------------------------------------ test data
def make_image(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Random photo-like content: a smooth random field, random shapes, sensor-like noise.

    Pure noise would be unrealistic for encoders (PNG cannot compress it at all, JPEG bloats).
    """
    field = rng.integers(0, 256, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(200):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(8, 120))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + s, y + s // 2), fill=color)
        else:
            draw.ellipse((x, y, x + s, y + s), fill=color)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-4, 5, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_boxes(w: int, h: int, k: int, rng: random.Random) -> list[Box]:
    out = []
    for _ in range(k):
        bw, bh = rng.randint(40, 400), rng.randint(40, 400)  # micro: well under 10% of the image
        x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
        out.append((x0, y0, x0 + bw, y0 + bh))
    return out


# ------------------------------------------------------------------------------------ timing
class Timer:
    """Accumulates CPU time (``process_time``) and wall time per stage.

    The table reports CPU time: on a shared machine other processes inflate wall time at random,
    while the CPU time this single-threaded work consumes barely moves.
    """

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.wall_ms: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] += (time.process_time() - c0) * 1000
            self.wall_ms[stage] += (time.perf_counter() - t0) * 1000


Outputs = list[tuple[bytes, bytes, bytes]]  # per box: crop png, full jpeg, full png


def run_ours(path: Path, boxes: list[Box], t: Timer) -> Outputs:
    out: Outputs = []
    with t("decode"):
        img = images.load_image(path)
    w, h = img.size
    for box in boxes:
        with t("crop+2x"):
            crop = images.crop_upscale(img, box, 2.0)
        with t("crop png"):
            crop_png = images.encode_png(crop)
        with t("box overlay"):
            boxed = images.draw_red_box(img, images.expand_box(box, 0.05, w, h), width=5)
        with t("full jpeg"):
            full_jpg = images.encode_jpeg(boxed, quality=95)
        with t("full png"):
            full_png = images.encode_png(boxed)
        with t("data url"):
            images.to_data_url(crop_png, "image/png")
            images.to_data_url(full_jpg, "image/jpeg")
        out.append((crop_png, full_jpg, full_png))
    return out


def make_plain(
    png_level: int, jpeg_subsampling: int
) -> Callable[[Path, list[Box], Timer], Outputs]:
    """The loop someone would write with Pillow directly (``-1`` = Pillow's default setting)."""
    png_kw = {} if png_level < 0 else {"compress_level": png_level}
    jpg_kw = {} if jpeg_subsampling < 0 else {"subsampling": jpeg_subsampling}

    def run_plain(path: Path, boxes: list[Box], t: Timer) -> Outputs:
        out: Outputs = []
        with t("decode"):
            img: Image.Image = Image.open(path)
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")
        w, h = img.size
        for x0, y0, x1, y1 in boxes:
            with t("crop+2x"):
                c = img.crop((x0, y0, x1, y1))
                crop = c.resize((c.width * 2, c.height * 2), Image.Resampling.LANCZOS)
            with t("crop png"):
                buf = io.BytesIO()
                crop.save(buf, "PNG", **png_kw)
                crop_png = buf.getvalue()
            with t("box overlay"):
                dx, dy = (x1 - x0) * 0.05, (y1 - y0) * 0.05
                ex0, ey0 = max(0, int(x0 - dx)), max(0, int(y0 - dy))
                ex1, ey1 = min(w, int(np.ceil(x1 + dx))), min(h, int(np.ceil(y1 + dy)))
                boxed = img.copy()
                ImageDraw.Draw(boxed).rectangle(
                    (ex0, ey0, ex1 - 1, ey1 - 1), outline=(255, 0, 0), width=5
                )
            with t("full jpeg"):
                buf = io.BytesIO()
                boxed.save(buf, "JPEG", quality=95, **jpg_kw)
                full_jpg = buf.getvalue()
            with t("full png"):
                buf = io.BytesIO()
                boxed.save(buf, "PNG", **png_kw)
                full_png = buf.getvalue()
            with t("data url"):
                _ = "data:image/png;base64," + base64.b64encode(crop_png).decode()
                _ = "data:image/jpeg;base64," + base64.b64encode(full_jpg).decode()
            out.append((crop_png, full_jpg, full_png))
        return out

    return run_plain


# ------------------------------------------------------------------------------------ reports
def print_table(title: str, cols: dict[str, dict[str, float]], base: str) -> None:
    names = list(cols)
    print(f"\n{title}")
    head = f"{'stage':<12}" + "".join(f"{n:>15}" for n in names)
    head += "".join(f"{base + '/' + n:>24}" for n in names if n != base)
    print(head)
    print("-" * len(head))
    for stage in [*STAGES, "total"]:
        vals = {
            n: (sum(c.values()) if stage == "total" else c.get(stage, 0.0)) for n, c in cols.items()
        }
        row = f"{stage:<12}" + "".join(f"{vals[n]:>13.0f}ms" for n in names)
        row += "".join(
            f"{(vals[base] / vals[n] if vals[n] else float('nan')):>24.2f}"
            for n in names
            if n != base
        )
        print(row)


def bench_objects(paths: list[Path], boxes: dict[Path, list[Box]], rounds: int) -> None:
    impls = {
        "ours": run_ours,
        "plain-same": make_plain(png_level=1, jpeg_subsampling=0),
        "plain-default": make_plain(png_level=-1, jpeg_subsampling=-1),
    }
    timers = {n: Timer() for n in impls}
    sizes: dict[str, list[int]] = {n: [0, 0, 0] for n in impls}
    for _ in range(rounds):
        for p in paths:
            results = {}
            for name, fn in impls.items():  # interleaved: same cache/thermal conditions
                results[name] = fn(p, boxes[p], timers[name])
            if results["ours"] != results["plain-same"]:
                sys.exit(f"outputs of ours and plain-same differ on {p}: not the same work")
            for name, res in results.items():
                for crop_png, full_jpg, full_png in res:
                    sizes[name][0] += len(crop_png)
                    sizes[name][1] += len(full_jpg)
                    sizes[name][2] += len(full_png)
    n_obj = sum(len(b) for b in boxes.values()) * rounds
    print_table(
        f"Per-object image work: {len(paths)} images x {len(next(iter(boxes.values())))} boxes"
        f" x {rounds} round(s) = {n_obj} objects (CPU ms in total; ratio = ours / other)",
        {n: dict(t.ms) for n, t in timers.items()},
        "ours",
    )
    walls = "  ".join(f"{n} {sum(t.wall_ms.values()):.0f}ms" for n, t in timers.items())
    print(f"wall time in total: {walls}")
    print("\noutput bytes per object (crop png / full jpeg / full png, KiB):")
    for name, (a, b, c) in sizes.items():
        print(
            f"  {name:<14} {a / n_obj / 1024:8.0f} {b / n_obj / 1024:8.0f} {c / n_obj / 1024:8.0f}"
        )
    print("  ours == plain-same byte for byte: yes")


def bench_manifest(sources: list[Path], n_files: int, workers: int, root: Path) -> None:
    """Time the manifest's per-file check on ``n_files`` files (hard links to the sources)."""
    pool = root / "manifest_pool"
    pool.mkdir()
    files = []
    for i in range(n_files):
        dst = pool / f"f{i:05d}{sources[i % len(sources)].suffix}"
        os.link(sources[i % len(sources)], dst)
        files.append(dst)
    sample = files[: len(sources)]
    datas = [p.read_bytes() for p in sample]

    def t(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    print(f"\nManifest check, per file (ms), {len(sample)} {sample[0].suffix} files:")
    load = t(lambda: [images.load_image(p) for p in sample]) / len(sample)
    full = t(lambda: [images.probe_image(d, jpeg_draft=False) for d in datas]) / len(sample)
    draft = t(lambda: [images.probe_image(d, jpeg_draft=True) for d in datas]) / len(sample)
    print(f"  load_image (reference)            {load:8.1f}")
    print(f"  probe_image, full decode          {full:8.1f}")
    print(f"  probe_image, JPEG draft (default) {draft:8.1f}")

    print(f"Manifest scan of {n_files} files, wall s (the decision between threads and processes):")
    seq = t(lambda: manifest.scan_pools({"p": str(pool)}, workers=1, min_side=1200)) / 1000
    thr = t(lambda: manifest.scan_pools({"p": str(pool)}, workers=workers, min_side=1200)) / 1000

    def processes() -> None:
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(["r2i.manifest"])
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            args = [("p", f.name, str(f)) for f in files]
            list(ex.map(_scan_one, args, chunksize=8))

    proc = t(processes) / 1000
    print(f"  scan_pools in-process            {seq:8.2f}")
    print(f"  scan_pools {workers} threads (ours)      {thr:8.2f}  ({seq / thr:.2f}x)")
    print(f"  {workers}-process pool (incl. start-up)  {proc:8.2f}  ({seq / proc:.2f}x)")


def _scan_one(args: tuple[str, str, str]) -> manifest.ImageRecord:
    return manifest.scan_file(*args, min_side=1200)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--boxes", type=int, default=3, help="boxes (objects) per image")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=2560)
    ap.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="source file format")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--manifest", action="store_true", help="also time the manifest check")
    ap.add_argument("--manifest-files", type=int, default=96, help="files in the manifest scan")
    ap.add_argument("--workers", type=int, default=manifest.default_workers())
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    prng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="r2i-bench-") as tmp:
        pool = Path(tmp, "pool")
        pool.mkdir()
        paths, boxes = [], {}
        t0 = time.perf_counter()
        for i in range(args.images):
            img = make_image(args.width, args.height, rng)
            p = pool / f"img{i:03d}.{'jpg' if args.format == 'jpeg' else 'png'}"
            img.save(p, "JPEG", quality=92) if args.format == "jpeg" else img.save(p, "PNG")
            paths.append(p)
            boxes[p] = make_boxes(args.width, args.height, args.boxes, prng)
        print(
            f"generated {args.images} {args.format} images {args.width}x{args.height} in "
            f"{time.perf_counter() - t0:.1f}s; Pillow {PIL.__version__}, cpus {os.cpu_count()}"
        )
        if args.boxes > 0:
            bench_objects(paths, boxes, args.rounds)
        if args.manifest:
            bench_manifest(paths, args.manifest_files, args.workers, Path(tmp))


if __name__ == "__main__":
    main()
