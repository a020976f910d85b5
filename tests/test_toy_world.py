"""Toy world generator and vision registration (test doubles of the offline demo)."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from r2i.toy.cli import main as cli_main
from r2i.toy.vision import SceneRegistry, find_red_box, red_mask
from r2i.toy.world import (
    ATTRIBUTES,
    COLORS,
    QUESTION_TEMPLATES,
    QUESTION_TYPES,
    World,
    generate_world,
    is_reddish,
    match_reference,
    parse_question,
    parse_reference,
    plausible_values,
    size_params,
)

TINY = size_params("tiny")


def tiny_world(factory: pytest.TempPathFactory) -> Path:
    """The tiny world, generated once per session (shared by the toy/sim test modules)."""
    root = factory.getbasetemp() / "toy_world_tiny_seed0"
    if not (root / "index.json").exists():
        generate_world(root, seed=0, **TINY)
    return root


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="module")
def world(world_dir: Path) -> World:
    return World.load(world_dir)


@pytest.fixture(scope="module")
def registry(world_dir: Path) -> SceneRegistry:
    return SceneRegistry(world_dir)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- generator ---------------------------------------------------------------------------------


def test_generation_is_deterministic(world_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_world(again, seed=0, **TINY)
    assert _tree_digest(again) == _tree_digest(world_dir)
    other = tmp_path / "other"
    generate_world(other, seed=1, n_scenes=1, n_benchmark_scenes=0, short_side=2000)
    a = (world_dir / "pools/toy/toy_0000.png").read_bytes()
    assert (other / "pools/toy/toy_0000.png").read_bytes() != a


def test_index_and_files(world_dir: Path, world: World) -> None:
    index = json.loads((world_dir / "index.json").read_text())
    pool = [s for s in index["scenes"] if s["split"] == "pool"]
    bench = [s for s in index["scenes"] if s["split"] == "benchmark"]
    assert len(pool) == TINY["n_scenes"] and len(bench) == TINY["n_benchmark_scenes"]
    extras = sorted(Path(e["file"]).name for e in index["pool_extras"])
    assert sorted(p.name for p in (world_dir / "pools/toy").iterdir()) == sorted(
        [f"{s['scene_id']}.png" for s in pool] + extras)  # pool images + the manifest's bad files
    assert {e["expected_drop"] for e in index["pool_extras"]} == {"too_small", "truncated", "not_an_image"}
    for s in index["scenes"]:
        truth = json.loads((world_dir / s["truth"]).read_text())
        assert truth["scene_id"] == s["scene_id"] and truth["split"] == s["split"]
        with Image.open(world_dir / s["image"]) as im:
            assert im.size == (truth["width"], truth["height"])
            assert min(im.size) >= 2000
    # benchmark scenes are different scenes, never in the pool
    pool_hashes = {hashlib.sha256((world_dir / s["image"]).read_bytes()).hexdigest() for s in pool}
    for s in bench:
        assert hashlib.sha256((world_dir / s["image"]).read_bytes()).hexdigest() not in pool_hashes


def test_scene_invariants(world: World) -> None:
    seen_attrs: set[str] = set()
    n_blurred = n_fine = 0
    for scene in world.scenes.values():
        area = scene.width * scene.height
        objs = scene.objects
        assert 25 <= len(objs) <= 45
        boxes = np.array([o.bbox for o in objs])
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= scene.width).all() and (boxes[:, 3] <= scene.height).all()
        for i in range(len(objs)):  # no two objects overlap
            for j in range(i + 1, len(objs)):
                a, b = objs[i].bbox, objs[j].bbox
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
        large = [o for o in objs if o.area >= 0.1 * area]
        assert 1 <= len(large) <= 2 and all(o.large for o in large)
        assert all(o.area < 0.03 * area for o in objs if not o.large)  # micro objects
        names = [o.name for o in objs]
        dups = [o for o in objs if o.duplicate]
        assert dups and all(names.count(o.name) == 2 for o in dups)
        assert all(names.count(o.name) == 1 for o in objs if not o.duplicate)
        assert any(o.seg_score < 0.75 for o in objs)
        assert sum(o.seg_score >= 0.75 for o in objs) > len(objs) / 2
        for o in objs:
            assert set(o.attributes) <= set(ATTRIBUTES)
            assert set(o.evidence_px) == set(o.attributes)
            assert o.attributes["color"] in COLORS
            seen_attrs |= set(o.attributes)
        # resolution spread: some details survive a 1-megapixel downscale of the whole image,
        # many do not (that gap is the point of the method)
        shrink = (1e6 / area) ** 0.5
        fine = [o.evidence_px[a] * shrink for o in objs if not o.large
                for a in o.attributes if a != "color"]
        assert sum(e < 8 for e in fine) >= 0.2 * len(fine)
        assert sum(e >= 8 for e in fine) >= 0.2 * len(fine)
        n_blurred += sum(e < 8 for e in fine)
        n_fine += len(fine)
    assert n_blurred >= 0.35 * n_fine
    assert seen_attrs == set(ATTRIBUTES)


def test_no_reddish_pixels(world_dir: Path, world: World) -> None:
    for sid in world.scenes:
        with Image.open(world.image_path(sid)) as im:
            assert not red_mask(np.asarray(im.convert("RGB"))).any()
    assert not any(is_reddish(c) for c in COLORS.values())
    assert is_reddish((255, 0, 0)) and is_reddish((201, 59, 59))


def test_question_templates_parse_back(world: World) -> None:
    for scene in world.scenes.values():
        for o in scene.objects:
            assert match_reference(o.name, scene.objects) == [x for x in scene.objects
                                                              if x.name == o.name]
            for attr in o.attributes:
                ref = o.reference(attr)
                assert o in match_reference(ref, scene.objects)
                for template in QUESTION_TEMPLATES[attr]:
                    assert parse_question(template.format(ref=ref) + " Extra text.") == (attr, ref)
    cons = parse_reference('orange hexagon sign reading "K7Q"')
    assert cons == {"color": "orange", "shape": "hexagon", "kind": "sign", "text": "K7Q"}
    assert parse_question("What's up?") is None


def test_plausible_values() -> None:
    rng = random.Random(0)
    for attr, truth in (("color", "orange"), ("shape", "star"), ("count", "4"), ("text", "K7Q"),
                        ("material", "wavy"), ("identity", "fish")):
        vals = plausible_values(attr, truth, rng, 3)
        assert len(vals) == 3 and len(set(vals)) == 3 and truth not in vals
    assert all(int(v) > 0 for v in plausible_values("count", "1", rng, 3))


def test_benchmark_parquet(world_dir: Path, world: World) -> None:
    table = pq.read_table(world_dir / "benchmark/zoombench_toy.parquet")
    assert table.column_names == ["id", "image", "crop_image", "prompt", "answer", "bbox",
                                  "question_type"]
    meta = json.loads(table.schema.metadata[b"huggingface"])
    assert meta["info"]["features"]["image"] == {"_type": "Image"}
    rows = table.to_pylist()
    bench = [s for s in world.scenes.values() if s.split == "benchmark"]
    assert 8 * len(bench) <= len(rows) <= 12 * len(bench)
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["question_type"] for r in rows} <= set(QUESTION_TYPES.values())
    assert len({r["question_type"] for r in rows}) >= 5
    for r in rows:
        full = Image.open(io.BytesIO(r["image"]["bytes"]))
        crop = Image.open(io.BytesIO(r["crop_image"]["bytes"]))
        assert full.format == crop.format == "PNG"
        x0, y0, x1, y1 = r["bbox"]
        assert 0 <= x0 < x1 <= full.width and 0 <= y0 < y1 <= full.height
        assert crop.size == (x1 - x0, y1 - y0)  # decisive region at native resolution
        assert np.array_equal(np.asarray(full.convert("RGB").crop(r["bbox"])),
                              np.asarray(crop.convert("RGB")))
        lines = r["prompt"].split("\n")
        if len(lines) > 1:  # multiple choice: "A. ..".."D. .."
            assert [ln[:3] for ln in lines[1:]] == ["A. ", "B. ", "C. ", "D. "]
            assert r["answer"] in "ABCD"
        else:
            assert r["answer"] and r["answer"] not in "ABCD"
    for scene in bench:
        for q in scene.questions:  # every benchmark question is valid: unique target
            attr, ref = parse_question(q["question"]) or ("", "")
            (target,) = match_reference(ref, scene.objects)
            assert target.id == q["object_id"] and target.answer(attr) == q["truth"]


def test_benchmark_loads_with_hf_datasets(world_dir: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_parquet(str(world_dir / "benchmark/zoombench_toy.parquet"))
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and isinstance(row["crop_image"], Image.Image)


def test_size_params_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert size_params("small") == {"n_scenes": 8, "n_benchmark_scenes": 4, "short_side": 2048}
    assert size_params("medium")["n_scenes"] == 32 and size_params("large")["n_scenes"] == 128
    with pytest.raises(ValueError):
        size_params("huge")
    with pytest.raises(ValueError):
        generate_world(tmp_path / "bad", short_side=1000)
    out = tmp_path / "cli"
    rc = cli_main(["--out", str(out), "--size", "tiny", "--scenes", "1", "--benchmark-scenes", "0",
                   "--objects", "10", "12"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenes"] == 1 and summary["benchmark_items"] == 0
    assert (out / "pools/toy/toy_0000.png").exists() and (out / "vision_index.npz").exists()


# -- vision registration -----------------------------------------------------------------------


def _jpeg(img: Image.Image, quality: int = 75) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _red_box(img: Image.Image, bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Draw the pipeline's overlay: box expanded 5 %, pure red, 5 px wide."""
    x0, y0, x1, y1 = bbox
    dx, dy = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
    box = (max(0, round(x0 - dx)), max(0, round(y0 - dy)),
           min(img.width - 1, round(x1 + dx)), min(img.height - 1, round(y1 + dy)))
    ImageDraw.Draw(img).rectangle(box, outline=(255, 0, 0), width=5)
    return box


def test_register_full_images(world: World, registry: SceneRegistry) -> None:
    rng = random.Random(0)
    for sid, scene in world.scenes.items():
        with Image.open(world.image_path(sid)) as im:
            img = im.convert("RGB")
        variants: list[tuple[Image.Image, tuple[int, int, int, int] | None]] = [(img, None)]
        small = img.resize((img.width // 3, img.height // 3), Image.Resampling.BICUBIC)
        variants.append((small, None))
        variants.append((_jpeg(img.resize((900, round(900 * img.height / img.width)))), None))
        obj = rng.choice([o for o in scene.objects if not o.large])
        boxed = img.copy()
        red = _red_box(boxed, obj.bbox)
        variants.append((boxed, red))
        variants.append((boxed.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS), red))
        variants.append((_jpeg(boxed, 85), red))
        for v, red_expected in variants:
            reg = registry.register(v)
            assert reg is not None and reg.scene_id == sid and reg.kind == "full"
            assert reg.region == (0.0, 0.0, float(scene.width), float(scene.height))
            assert reg.scale == pytest.approx(v.width / scene.width, rel=0.01)
            if red_expected is None:
                assert reg.red_box is None
            else:
                assert reg.red_box is not None
                tol = 2.0 / reg.scale + 1
                assert np.allclose(reg.red_box, [*red_expected[:2], red_expected[2] + 1,
                                                 red_expected[3] + 1], atol=tol)


def test_register_crops(world: World, registry: SceneRegistry) -> None:
    rng = random.Random(1)
    for sid, scene in world.scenes.items():
        with Image.open(world.image_path(sid)) as im:
            img = im.convert("RGB")
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            e = rng.choice([0.0, 0.0, 0.02, 0.05, 0.08])
            box = (max(0, round(x0 - e * (x1 - x0))), max(0, round(y0 - e * (y1 - y0))),
                   min(scene.width, round(x1 + e * (x1 - x0))),
                   min(scene.height, round(y1 + e * (y1 - y0))))
            crop = img.crop(box)
            crop = crop.resize((crop.width * 2, crop.height * 2), Image.Resampling.LANCZOS)
            reg = registry.register(crop)
            assert reg is not None and reg.scene_id == sid and reg.kind == "crop", (o.name, e)
            assert reg.scale == pytest.approx(2.0, rel=0.1)
            inside = scene.objects_in(reg.region)
            assert o.name in {x.name for x in inside}
            if not o.duplicate:  # a duplicate's tight crop is pixel-identical to its twin's
                assert np.allclose(reg.region, box, atol=0.12 * max(x1 - x0, y1 - y0) + 2)
        for q in scene.questions:  # benchmark crops at native scale
            reg = registry.register(img.crop(tuple(q["bbox"])))
            assert reg is not None and reg.scene_id == sid
            assert np.allclose(reg.region, q["bbox"], atol=1) and reg.scale == pytest.approx(1.0)


def test_register_rejects_foreign_images(registry: SceneRegistry) -> None:
    rng = np.random.default_rng(0)
    assert registry.register(Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))) is None
    assert registry.register(Image.new("RGB", (640, 480), (10, 200, 30))) is None
    assert registry.register(Image.new("RGB", (2, 2))) is None


def test_find_red_box_ignores_speckle() -> None:
    mask = np.zeros((100, 120), dtype=bool)
    mask[20:25, 30:90] = mask[70:75, 30:90] = True
    mask[20:75, 30:35] = mask[20:75, 85:90] = True
    mask[5, 5] = mask[95, 110] = True  # isolated JPEG speckle
    assert find_red_box(mask) == (30, 20, 90, 75)
    assert find_red_box(np.zeros((10, 10), dtype=bool)) is None
