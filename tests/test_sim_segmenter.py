"""SimSegmenter: the simulated text-prompted segmenter (test double for SAM3)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2i.sim.segmenter import Instance, SimSegmenter
from r2i.toy.world import Scene, World, generate_world, size_params


def tiny_world(factory: pytest.TempPathFactory) -> Path:
    """The tiny world, generated once per session (shared by the toy/sim test modules)."""
    root = factory.getbasetemp() / "toy_world_tiny_seed0"
    if not (root / "index.json").exists():
        generate_world(root, seed=0, **size_params("tiny"))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.load(tiny_world(tmp_path_factory))


@pytest.fixture(scope="module")
def seg(world: World) -> SimSegmenter:
    return SimSegmenter(world.root)


@pytest.fixture(scope="module")
def scene(world: World) -> Scene:
    return world.scenes["toy_0000"]


@pytest.fixture(scope="module")
def img(world: World, scene: Scene) -> Image.Image:
    with Image.open(world.image_path(scene.scene_id)) as im:
        return im.convert("RGB")


def test_unique_and_duplicate_objects(seg: SimSegmenter, scene: Scene, img: Image.Image) -> None:
    unique = [o for o in scene.objects if not o.duplicate]
    dup = next(o for o in scene.objects if o.duplicate)
    phrases = [o.name for o in unique] + [dup.name, "purple striped pentagon tile with wings"]
    result = seg.segment(img, phrases)
    assert len(result) == len(phrases)
    for o, insts in zip(unique, result, strict=False):
        assert len(insts) == 1, o.name
        assert insts[0].box == tuple(float(v) for v in o.bbox)
        assert insts[0].score == pytest.approx(o.seg_score, abs=1e-4)
    dup_boxes = sorted(i.box for i in result[len(unique)])
    assert dup_boxes == sorted(tuple(float(v) for v in o.bbox) for o in scene.objects
                               if o.name == dup.name)
    assert result[-1] == []
    assert any(i[0].score < 0.75 for i in result[: len(unique)])  # something for the score filter
    inst = result[0][0]
    assert isinstance(inst, Instance)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inst.score = 1.0  # type: ignore[misc]


def test_phrase_matching_is_tolerant(seg: SimSegmenter, scene: Scene, img: Image.Image) -> None:
    o = next(x for x in scene.objects if x.kind == "icon" and not x.duplicate)
    near = o.name.replace(" on a ", " on the ").upper()  # exact after normalisation
    words = o.name.split()
    changed = o.name.replace("icon", "picture")  # one word off: best token overlap
    res = seg.segment(img, [near, changed, words[0], ""])
    assert [len(r) for r in res[:2]] == [1, 1]
    assert res[0][0].box == res[1][0].box == tuple(float(v) for v in o.bbox)
    assert res[2] == [] and res[3] == []  # a lone color word overlaps too little


def test_boxes_follow_the_given_image(seg: SimSegmenter, scene: Scene, img: Image.Image) -> None:
    o = next(x for x in scene.objects if not x.duplicate and not x.large)
    half = img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
    (inst,) = seg.segment(half, [o.name])[0]
    assert np.allclose(inst.box, np.array(o.bbox) / 2, atol=1.0)
    x0, y0, x1, y1 = o.bbox
    crop = img.crop((x0 - 10, y0 - 10, x1 + 10, y1 + 10))
    (inst,) = seg.segment(crop, [o.name])[0]
    assert np.allclose(inst.box, (10, 10, 10 + x1 - x0, 10 + y1 - y0), atol=2.0)


def test_unrecognised_image_finds_nothing(seg: SimSegmenter) -> None:
    noise = Image.effect_noise((500, 400), 70).convert("RGB")
    assert seg.segment(noise, ["anything", "blue star badge"]) == [[], []]
