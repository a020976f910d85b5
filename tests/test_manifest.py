"""r2i.manifest: scanning pools with every bad-file kind, duplicates, shards, incremental rescans."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2i import manifest
from r2i.manifest import (
    ImageRecord,
    build_manifest,
    read_manifest,
    scan_pools,
    shard_of,
    shard_path,
    shard_records,
    summarize,
    write_manifest,
    write_shard_lists,
)

from .test_images import bomb_png, exif_jpeg, noise

MIN = 32  # small images keep the scan tests fast; the 1200 boundary has its own test


def encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def pools(tmp_path: Path) -> dict[str, str]:
    """Two pools holding one file of every kind the scan must handle."""
    a, b = tmp_path / "pool_a", tmp_path / "pool_b"
    good_png = encoded(noise(64, 48, seed=1), "PNG")
    write(a / "good.png", good_png)
    write(a / "sub" / "deeper" / "good.jpg", encoded(noise(64, 48, seed=2), "JPEG"))
    write(a / "no_extension", encoded(noise(40, 40, seed=3), "PNG"))
    write(a / "wrong_ext.txt.bin", encoded(noise(40, 40, seed=4), "JPEG"))
    png = encoded(noise(64, 64, seed=5), "PNG")
    write(a / "trunc.png", png[: len(png) // 2])
    jpg = encoded(noise(64, 64, seed=6), "JPEG", quality=90)
    write(a / "trunc.jpg", jpg[: len(jpg) // 2])
    write(a / "zero.jpg", b"")
    write(a / "text.jpg", b"hello, I am a text file\n" * 10)
    write(a / "bomb.png", bomb_png(50_000, 50_000))
    write(a / "cmyk.jpg", encoded(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"))
    g16 = Image.fromarray((np.arange(40 * 40, dtype=np.uint16) * 40).reshape(40, 40))
    write(a / "gray16.png", encoded(g16, "PNG"))
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    write(a / "palette_alpha.png", encoded(pal, "PNG", transparency=0))
    exif_jpeg(a / "rotated.jpg", 6)  # 40x20 stored -> 20x40: too small for MIN
    write(a / "tiny.png", encoded(noise(32, 100, seed=7), "PNG"))  # 32 is not > 32
    write(a / "meta.json", b'{"caption": "x"}')
    write(a / ".DS_Store", b"\x00\x01junk")
    write(a / ".hidden_dir" / "img.png", good_png)
    write(b / "copy_of_good.png", good_png)  # duplicate across pools
    write(b / "z_own.png", encoded(noise(48, 48, seed=8), "PNG"))
    return {"a": str(a), "b": str(b)}


EXPECTED = {
    "a/bomb.png": "decompression_bomb",
    "a/cmyk.jpg": None,
    "a/good.png": None,
    "a/gray16.png": None,
    "a/meta.json": "not_an_image",
    "a/no_extension": None,
    "a/palette_alpha.png": None,
    "a/rotated.jpg": "too_small",
    "a/sub/deeper/good.jpg": None,
    "a/text.jpg": "not_an_image",
    "a/tiny.png": "too_small",
    "a/trunc.jpg": "truncated",
    "a/trunc.png": "truncated",
    "a/wrong_ext.txt.bin": None,
    "a/zero.jpg": "zero_bytes",
    "b/copy_of_good.png": "duplicate",
    "b/z_own.png": None,
}


def by_key(records: list[ImageRecord]) -> dict[str, ImageRecord]:
    return {r.key: r for r in records}


def test_scan_every_kind(pools: dict[str, str]) -> None:
    records = scan_pools(pools, min_side=MIN, workers=1)
    recs = by_key(records)
    assert {k: r.reason for k, r in recs.items()} == EXPECTED  # hidden files are not recorded
    assert [r.key for r in records] == sorted(recs)  # deterministic scan order
    for r in records:
        assert (r.status == "kept") == (r.reason is None)
        assert r.reason is None or r.reason in manifest.DROP_REASONS
        assert os.path.isabs(r.abs_path)
    rot = recs["a/rotated.jpg"]
    assert (rot.width, rot.height) == (20, 40)  # after EXIF transpose
    assert recs["b/copy_of_good.png"].duplicate_of == "a/good.png"
    assert recs["b/copy_of_good.png"].sha256 == recs["a/good.png"].sha256
    assert recs["a/meta.json"].sha256 is None  # skipped by extension: not read
    assert recs["a/no_extension"].format == "PNG"
    assert recs["a/cmyk.jpg"].mode == "CMYK"
    assert recs["a/trunc.jpg"].sha256 is not None


def test_scan_without_jpeg_draft_agrees(pools: dict[str, str]) -> None:
    fast = scan_pools(pools, min_side=MIN, workers=1)
    full = scan_pools(pools, min_side=MIN, workers=1, jpeg_draft=False)
    assert [(r.key, r.reason) for r in fast] == [(r.key, r.reason) for r in full]


def test_threaded_scan_gives_same_records(pools: dict[str, str]) -> None:
    one = scan_pools(pools, min_side=MIN, workers=1)
    two = scan_pools(pools, min_side=MIN, workers=2)
    assert one == two


def test_min_side_boundary_default_1200(tmp_path: Path) -> None:
    pool = tmp_path / "big"
    for name, size in {
        "tall_1200.png": (1200, 5000),
        "wide_1200.png": (5000, 1200),
        "square_1201.png": (1201, 1201),
    }.items():
        write(pool / name, encoded(Image.new("L", size, 128), "PNG", compress_level=1))
    recs = by_key(scan_pools({"p": str(pool)}, workers=1))
    assert recs["p/tall_1200.png"].reason == "too_small"
    assert recs["p/wide_1200.png"].reason == "too_small"
    assert recs["p/square_1201.png"].kept
    assert (recs["p/tall_1200.png"].width, recs["p/tall_1200.png"].height) == (1200, 5000)


def test_missing_pool_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        scan_pools({"nope": str(tmp_path / "absent")}, workers=1)


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    pool = tmp_path / "p"
    write(pool / "d" / "img.png", encoded(noise(40, 40), "PNG"))
    (pool / "d" / "loop").symlink_to(pool, target_is_directory=True)
    (pool / "linked").symlink_to(pool / "d", target_is_directory=True)
    keys = [r.key for r in scan_pools({"p": str(pool)}, min_side=MIN, workers=1)]
    assert keys == ["p/d/img.png"]  # each real directory is walked once


def test_manifest_roundtrip_and_summary(pools: dict[str, str], tmp_path: Path) -> None:
    records = scan_pools(pools, min_side=MIN, workers=1)
    out = tmp_path / "out" / "manifest.parquet"
    spath = write_manifest(records, out, params={"min_side": MIN})
    assert spath == tmp_path / "out" / "manifest.summary.json"
    assert read_manifest(out) == records
    summary = json.loads(spath.read_text())
    assert summary == {**summarize(records), "params": {"min_side": MIN}}
    kept = sum(1 for v in EXPECTED.values() if v is None)
    assert (summary["files"], summary["kept"], summary["dropped"]) == (17, kept, 17 - kept)
    assert summary["by_reason"]["truncated"] == 2
    assert summary["by_reason"]["duplicate"] == 1
    assert summary["by_pool"]["b"] == {
        "files": 2,
        "kept": 1,
        "dropped": 1,
        "by_reason": {"duplicate": 1},
    }
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


def kept_record(i: int) -> ImageRecord:
    sha = f"{i:064x}"
    return ImageRecord(
        pool="p", rel_path=f"{i}.png", abs_path=f"/x/{i}.png", sha256=sha, size_bytes=1,
        format="PNG", mode="RGB", width=2000, height=2000, status="kept", reason=None,
    )  # fmt: skip


def test_shard_records_partition() -> None:
    records = [kept_record(i) for i in range(20)]
    parts = [shard_records(records, s, 3) for s in range(3)]
    assert sorted(r.sha256 for p in parts for r in p) == sorted(r.sha256 for r in records)  # type: ignore[type-var]
    for s, part in enumerate(parts):
        assert [r.sha256 for r in part] == sorted(r.sha256 for r in part)  # type: ignore[type-var]
        assert all(shard_of(r, 3) == s for r in part)
    assert shard_of("ff", 4) == 255 % 4
    with pytest.raises(ValueError):
        shard_records(records, 3, 3)


def snapshot(shard_dir: Path, n: int) -> dict[int, tuple[int, bytes]]:
    return {
        i: (shard_path(shard_dir, i).stat().st_mtime_ns, shard_path(shard_dir, i).read_bytes())
        for i in range(n)
    }


def test_adding_an_image_changes_exactly_one_shard(pools: dict[str, str], tmp_path: Path) -> None:
    n = 4
    shard_dir = tmp_path / "shards"
    before_records = scan_pools(pools, min_side=MIN, workers=1)
    assert all(write_shard_lists(before_records, n, shard_dir).values())
    past = 1_000_000_000 * 10**9  # 2001: any rewrite would move the mtime away from this
    for i in range(n):
        os.utime(shard_path(shard_dir, i), ns=(past, past))
    before = snapshot(shard_dir, n)

    # Rewriting the same records touches nothing.
    assert not any(write_shard_lists(before_records, n, shard_dir).values())
    assert snapshot(shard_dir, n) == before

    new = write(Path(pools["b"]) / "new_image.png", encoded(noise(50, 50, seed=99), "PNG"))
    after_records = scan_pools(pools, min_side=MIN, workers=1)
    new_rec = by_key(after_records)["b/new_image.png"]
    assert new_rec.kept and new_rec.abs_path == str(new)
    target = shard_of(new_rec, n)
    changed = write_shard_lists(after_records, n, shard_dir)
    assert changed == {i: i == target for i in range(n)}
    after = snapshot(shard_dir, n)
    for i in range(n):
        if i == target:
            assert after[i][0] != past and after[i][1] != before[i][1]
        else:
            assert after[i] == before[i]
    doc = json.loads(shard_path(shard_dir, target).read_text())
    assert doc["shard"] == target and doc["n_shards"] == n and doc["count"] == len(doc["images"])
    hashes = [e["hash"] for e in doc["images"]]
    assert set(doc["images"][0]) >= {"hash", "path", "pool", "rel_path", "width", "height"}
    assert new_rec.sha256 in hashes and hashes == sorted(hashes)
    assert [p.name for p in shard_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_shard_files_cover_kept_and_stale_ones_go(pools: dict[str, str], tmp_path: Path) -> None:
    records = scan_pools(pools, min_side=MIN, workers=1)
    shard_dir = tmp_path / "shards"
    write_shard_lists(records, 8, shard_dir)
    write_shard_lists(records, 3, shard_dir)
    assert sorted(p.name for p in shard_dir.iterdir()) == [f"shard-00{i}.json" for i in range(3)]
    listed = [
        e["hash"]
        for i in range(3)
        for e in json.loads(shard_path(shard_dir, i).read_text())["images"]
    ]
    assert sorted(listed) == sorted(r.sha256 for r in records if r.kept)  # type: ignore[type-var]


def test_incremental_rescan_uses_state(
    pools: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    calls: list[str] = []
    real = manifest.scan_file

    def counting(pool: str, rel: str, path: str, **kw: object) -> ImageRecord:
        calls.append(f"{pool}/{rel}")
        return real(pool, rel, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest, "scan_file", counting)
    first = scan_pools(pools, min_side=MIN, workers=1, state_dir=state)
    assert len(calls) == len(EXPECTED)
    calls.clear()
    assert scan_pools(pools, min_side=MIN, workers=1, state_dir=state) == first
    assert calls == []  # nothing changed: nothing read or decoded

    p = Path(pools["a"]) / "good.png"
    p.write_bytes(encoded(noise(70, 70, seed=42), "PNG"))
    third = by_key(scan_pools(pools, min_side=MIN, workers=1, state_dir=state))
    assert calls == ["a/good.png"]
    assert third["a/good.png"].width == 70
    assert third["b/copy_of_good.png"].kept  # no longer a duplicate of the changed file
    calls.clear()
    scan_pools(pools, min_side=MIN + 1, workers=1, state_dir=state)  # settings changed: full scan
    assert len(calls) == len(EXPECTED)


def test_build_manifest(pools: dict[str, str], tmp_path: Path) -> None:
    res = tmp_path / "results"
    summary = build_manifest(
        pools,
        manifest_path=res / "manifest.parquet",
        summary_path=res / "summary.json",
        shard_dir=res / "shards",
        n_shards=2,
        min_side=MIN,
        state_dir=res / "state",
        workers=1,
    )
    assert summary["shards_rewritten"] == [0, 1]
    on_disk = json.loads((res / "summary.json").read_text())
    assert on_disk["kept"] == summary["kept"] and on_disk["params"]["n_shards"] == 2
    assert "shards_rewritten" not in on_disk
    again = build_manifest(
        pools,
        manifest_path=res / "manifest.parquet",
        summary_path=res / "summary.json",
        shard_dir=res / "shards",
        n_shards=2,
        min_side=MIN,
        state_dir=res / "state",
        workers=1,
    )
    assert again["shards_rewritten"] == []
