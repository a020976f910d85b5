"""ToyBrain: the simulated models (test doubles) answering the real prompt templates."""

from __future__ import annotations

import io
import json
import random
import re
import string
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from r2i.client.messages import user_message
from r2i.sim.brains import SIM_MODELS, Brain
from r2i.sim.toybrain import ToyBrain, canonical_answer
from r2i.toy.world import (
    QUESTION_TEMPLATES,
    Scene,
    ToyObject,
    World,
    generate_world,
    match_reference,
    parse_question,
    plausible_values,
    size_params,
)

PROMPTS = Path(__file__).resolve().parents[1] / "workflow" / "r2i" / "data" / "prompts"


def tiny_world(factory: pytest.TempPathFactory) -> Path:
    """The tiny world, generated once per session (shared by the toy/sim test modules)."""
    root = factory.getbasetemp() / "toy_world_tiny_seed0"
    if not (root / "index.json").exists():
        generate_world(root, seed=0, **size_params("tiny"))
    return root


def prompt(name: str, **kw: Any) -> str:
    return string.Template((PROMPTS / f"{name}.txt").read_text()).substitute(**kw)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def ask(brain: ToyBrain, model: str, text: str, images: list[Any] | tuple[Any, ...] = (),
        n: int = 1, seed: int = 0, temperature: float = 0.7) -> list[str]:
    return brain.complete(model, [user_message(text, list(images))], n, seed,
                          {"temperature": temperature})


def boxed(text: str) -> str | None:
    m = re.search(r"\\boxed\{(.*)\}", text, re.S)
    return m.group(1) if m else None


def json_payload(text: str) -> Any:
    """What the pipeline's tolerant parser does: take the first JSON array/object in the text."""
    m = re.search(r"(\[.*\]|\{.*\})", text, re.S)
    assert m, text
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="module")
def world(world_dir: Path) -> World:
    return World.load(world_dir)


@pytest.fixture(scope="module")
def brain(world_dir: Path) -> ToyBrain:
    return ToyBrain(world_dir)


@pytest.fixture(scope="module")
def exact(world_dir: Path) -> ToyBrain:
    """Teachers and student that never slip (error rates 0)."""
    return ToyBrain(world_dir, teacher_error_rate=0.0, student_error_rate=0.0)


@pytest.fixture(scope="module")
def scene(world: World) -> Scene:
    return world.scenes["toy_0000"]


@pytest.fixture(scope="module")
def full(world: World, scene: Scene) -> bytes:
    return world.image_path(scene.scene_id).read_bytes()  # sent as stored, like the pipeline


@pytest.fixture(scope="module")
def scene_img(full: bytes) -> Image.Image:
    return Image.open(io.BytesIO(full)).convert("RGB")


def crop2x(img: Image.Image, box: tuple[int, ...]) -> Image.Image:
    c = img.crop(box)
    return c.resize((c.width * 2, c.height * 2), Image.Resampling.LANCZOS)


def small_objects(scene: Scene) -> list[ToyObject]:
    return [o for o in scene.objects if not o.large and not o.duplicate]


# -- protocol ----------------------------------------------------------------------------------


def test_is_a_brain(brain: ToyBrain, world_dir: Path) -> None:
    assert isinstance(brain, Brain)
    assert set(SIM_MODELS) <= set(brain.models)
    with pytest.raises(TypeError):
        ToyBrain(world_dir, no_such_option=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        ToyBrain(world_dir, teacher_error_rate=1.5)


def test_deterministic_and_per_sample_seeds(brain: ToyBrain, scene: Scene, scene_img: Image.Image) -> None:
    o = small_objects(scene)[0]
    crop = png(crop2x(scene_img, o.bbox))
    text = prompt("answer_question", question=f"What color is the {o.reference('color')}?")
    four = ask(brain, "sim-teacher-b", text, [crop], n=4, seed=10)
    assert four == ask(brain, "sim-teacher-b", text, [crop], n=4, seed=10)
    assert four == [ask(brain, "sim-teacher-b", text, [crop], n=1, seed=10 + i)[0] for i in range(4)]
    greedy = ask(brain, "sim-teacher-b", text, [crop], n=3, seed=5, temperature=0.0)
    assert len(set(greedy)) == 1


# -- teacher roles -----------------------------------------------------------------------------


def test_list_objects(exact: ToyBrain, world_dir: Path, scene: Scene, full: bytes) -> None:
    out = ask(exact, "sim-teacher-a", prompt("list_objects", max_objects=8), [full])[0]
    body = boxed(out)
    assert body is not None
    names = [re.sub(r"^\d+\.\s*", "", ln).strip() for ln in body.splitlines()]
    assert 3 <= len(names) <= 8
    assert set(names) <= {o.name for o in small_objects(scene)} | {o.name for o in scene.objects if o.large}
    out_b = ask(exact, "sim-teacher-b", prompt("list_objects", max_objects=8), [full])[0]
    assert out_b.startswith("Here are") and boxed(out_b)
    # a listing teacher that always errs names duplicates or objects that are not there
    sloppy = ToyBrain(world_dir, list_error_rate=1.0)
    body = boxed(ask(sloppy, "sim-teacher-a", prompt("list_objects", max_objects=8), [full])[0]) or ""
    unique = {o.name for o in scene.objects if not o.duplicate}
    assert all(re.sub(r"^\d+\.\s*", "", ln) not in unique for ln in body.splitlines())


def test_write_questions(exact: ToyBrain, brain: ToyBrain, scene: Scene, scene_img: Image.Image) -> None:
    raw_outputs = []
    for o in small_objects(scene)[:6]:
        crop = png(crop2x(scene_img, o.bbox))
        text = prompt("write_questions", n_questions=3, examples="- What color is the cup?")
        for out in ask(exact, "sim-teacher-a", text, [crop], n=3, seed=1):
            raw_outputs.append(out)
            qs = json_payload(out)
            assert 1 <= len(qs) <= min(3, len(o.attributes))
            for q in qs:
                attr, ref = parse_question(q["question"]) or ("", "")
                assert attr in o.attributes
                assert o in match_reference(ref, scene.objects)
                assert str(o.attributes[attr]).lower() not in ref.lower().split()  # no leak
    assert any(out.lstrip().startswith("```json") for out in raw_outputs)  # tolerant parsing
    assert any(out.lstrip().startswith("[") for out in raw_outputs)
    noise = Image.effect_noise((300, 200), 60).convert("RGB")
    assert ask(brain, "sim-teacher-a", prompt("write_questions", n_questions=3, examples=""),
               [png(noise)])[0] == "[]"


def _validate(brain: ToyBrain, question: str, full: bytes, crop: bytes, seed: int = 0) -> str:
    return ask(brain, "sim-teacher-a", prompt("validate_question", question=question),
               [full, crop], seed=seed, temperature=0.3)[0]


def test_validate(exact: ToyBrain, world_dir: Path, scene: Scene, full: bytes,
                  scene_img: Image.Image) -> None:
    objs = small_objects(scene)
    o, other = objs[0], objs[-1]
    crop = png(crop2x(scene_img, o.bbox))
    good = f"What color is the {o.reference('color')}?"
    out = _validate(exact, good, full, crop)
    assert re.fullmatch(r"VALID: Yes\nREASON: .+", out)
    kind = {"panel": "dot panel"}.get(o.kind, o.kind)
    missing = next(a for a in QUESTION_TEMPLATES if a not in o.attributes)
    bad = [
        f"What color is the {kind}?",  # ambiguous: many objects of that kind
        "What color is the hexagon sign reading ZZZZZ?",  # not in the photo
        QUESTION_TEMPLATES[missing][0].format(ref=o.name),  # attribute it does not have
        f"What color is the {other.reference('color')}?",  # another object: not in the crop
        "Is this a nice picture?",
    ]
    for q in bad:
        assert re.fullmatch(r"VALID: No\nREASON: .+", _validate(exact, q, full, crop)), q
    dup = next(x for x in scene.objects if x.duplicate)
    dup_crop = png(crop2x(scene_img, dup.bbox))
    assert _validate(exact, f"What color is the {dup.reference('color')}?", full, dup_crop).startswith("VALID: No")
    # a question writer that always errs writes questions a careful validator rejects
    sloppy = ToyBrain(world_dir, teacher_error_rate=1.0)
    for x in objs[:6]:
        c = png(crop2x(scene_img, x.bbox))
        for q in json_payload(ask(sloppy, "sim-teacher-a", prompt("write_questions", n_questions=3,
                                                                  examples=""), [c])[0]):
            assert _validate(exact, q["question"], full, c).startswith("VALID: No"), q


def test_teachers_answer_truth_on_crops(exact: ToyBrain, brain: ToyBrain, scene: Scene,
                                        scene_img: Image.Image) -> None:
    right = total = 0
    for o in small_objects(scene)[:10]:
        crop = png(crop2x(scene_img, o.bbox))
        for attr in o.attributes:
            text = prompt("answer_question", question=f"What color is the {o.reference(attr)}?"
                          if attr == "color" else QUESTION_TEMPLATES[attr][0].format(ref=o.reference(attr)))
            for model in ("sim-teacher-a", "sim-teacher-b"):
                outs = ask(exact, model, text, [crop], n=4, seed=3)
                for out in outs:
                    assert canonical_answer(boxed(out) or "") == canonical_answer(o.answer(attr))
                if model == "sim-teacher-b":
                    assert all("The answer is \\boxed{" in out for out in outs)
            for out in ask(brain, "sim-teacher-a", text, [crop], n=8, seed=3):
                total += 1
                right += canonical_answer(boxed(out) or "") == canonical_answer(o.answer(attr))
    assert 0.75 <= right / total < 1.0  # default error rate 0.1


def test_distractors(brain: ToyBrain, scene: Scene, scene_img: Image.Image) -> None:
    img = scene_img.copy()
    o = next(x for x in small_objects(scene) if x.kind == "panel")
    ImageDraw.Draw(img).rectangle(o.bbox, outline=(255, 0, 0), width=5)
    cases = [("count", o.answer("count")), ("color", "Orange"), ("text", "K7Q"), ("shape", "star")]
    boxed_png = png(img)
    for attr, truth in cases:
        q = prompt("focus_instruction", question=QUESTION_TEMPLATES[attr][0].format(ref="thing"))
        out = ask(brain, "sim-teacher-a", prompt("distractors", question=q, answer=truth,
                                                 n_distractors=3), [boxed_png])[0]
        ds = json_payload(out)["distractors"]
        assert len(ds) == 3 and len({canonical_answer(d) for d in ds}) == 3
        assert canonical_answer(truth) not in {canonical_answer(d) for d in ds}
        if attr == "count":
            assert all(d.isdigit() for d in ds)
        if attr == "color":
            assert all(d[:1].isupper() for d in ds)  # same style as the correct answer


# -- consensus and judge -----------------------------------------------------------------------


def test_consensus(brain: ToyBrain) -> None:
    answers = ["Orange", "orange", "the orange", "Blue", "ORANGE", "orange color", "blue", "Orange."]
    text = prompt("consensus", n_answers=8, question="What color is the sign?",
                  answers="\n".join(f"{i + 1}. {a}" for i, a in enumerate(answers)))
    for out in ask(brain, "sim-llm", text, n=6, seed=2):
        data = json_payload(out)
        assert canonical_answer(data["majority_answer"]) == "orange" and data["count"] == 6
    text = prompt("consensus", n_answers=4, question="How many dots?",
                  answers="- five\n- 5\n- 5 dots\n- 4")
    data = json_payload(ask(brain, "sim-llm", text)[0])
    assert data["count"] == 3 and canonical_answer(data["majority_answer"]) == "5"


def test_judge(brain: ToyBrain) -> None:
    q = "What shape is the blue badge?\nOptions:\nA. star\nB. hexagon\nC. circle\nD. cross"

    def judge(reference: str, answer: str) -> str:
        return ask(brain, "sim-judge", prompt("judge", question=q, reference=reference, answer=answer))[0]

    assert judge("B", "<think>hmm</think> <answer>B</answer>") == "Yes"
    assert judge("B", "hexagon") == "Yes"
    assert judge("hexagon", "B. hexagon") == "Yes"
    assert judge("B", "<answer>C</answer>") == "No"
    assert judge("B", "") == "No"
    assert ask(brain, "sim-judge", prompt("judge", question="How many dots?", reference="5",
                                          answer="Five dots"))[0] == "Yes"
    assert canonical_answer("The Grey, striped") == "gray striped"


# -- student: resolution-limited perception ----------------------------------------------------


def _mcq(question: str, truth: str, rng: random.Random, attr: str) -> tuple[str, str]:
    opts = [*plausible_values(attr, truth, rng, 3), truth]
    rng.shuffle(opts)
    body = prompt("mcq", question=question, options="\n".join(f"{'ABCD'[i]}. {v}" for i, v in enumerate(opts)))
    return prompt("answer_format", question=body), "ABCD"[opts.index(truth)]


def _answer(out: str) -> str:
    m = re.search(r"<answer>(.*?)</answer>", out, re.S)
    assert m and out.startswith("<think>"), out
    return m.group(1).strip()


def test_student_sees_on_crops_guesses_on_full_images(exact: ToyBrain, world: World) -> None:
    rng = random.Random(0)
    hits = {"full_small": [], "crop_small": [], "full_large": []}
    for scene in (s for s in world.scenes.values() if s.split == "pool"):
        raw = world.image_path(scene.scene_id).read_bytes()
        img = Image.open(io.BytesIO(raw)).convert("RGB")
        shrink = (1e6 / (scene.width * scene.height)) ** 0.5
        for o in small_objects(scene):
            for attr in o.attributes:
                ref = o.reference(attr)
                if match_reference(ref, scene.objects) != [o]:
                    continue
                eff = o.evidence_px[attr] * shrink
                if 6 <= eff < 12:
                    continue  # keep clear-cut cases only
                text, letter = _mcq(QUESTION_TEMPLATES[attr][0].format(ref=ref), o.answer(attr), rng, attr)
                outs = ask(exact, "sim-student", text, [raw], n=4, seed=7, temperature=1.0)
                key = "full_small" if eff < 6 else "full_large"
                hits[key] += [_answer(x) == letter for x in outs]
                if eff < 6:
                    outs = ask(exact, "sim-student", text, [png(crop2x(img, o.bbox))], n=4, seed=7)
                    hits["crop_small"] += [_answer(x) == letter for x in outs]
    acc = {k: sum(v) / len(v) for k, v in hits.items()}
    print("student accuracy", acc, {k: len(v) for k, v in hits.items()})
    assert min(len(v) for v in hits.values()) >= 40
    assert acc["crop_small"] >= 0.95 and acc["full_large"] >= 0.95
    assert acc["full_small"] <= 0.45  # guessing among 4 options
    assert acc["crop_small"] - acc["full_small"] >= 0.5


def test_student_uses_the_red_box(exact: ToyBrain, scene: Scene, scene_img: Image.Image) -> None:
    o = max(small_objects(scene), key=lambda x: x.evidence_px["color"])
    img = scene_img.copy()
    ImageDraw.Draw(img).rectangle(o.bbox, outline=(255, 0, 0), width=5)
    q = prompt("focus_instruction", question="What color is the object?")  # names no object
    text, letter = _mcq(q, o.answer("color"), random.Random(1), "color")
    outs = ask(exact, "sim-student", text, [png(img)], n=4, seed=1, temperature=1.0)
    assert all(_answer(x) == letter for x in outs)


def test_student_zooming_gap_on_the_toy_benchmark(exact: ToyBrain, world_dir: Path) -> None:
    rows = pq.read_table(world_dir / "benchmark/zoombench_toy.parquet").to_pylist()
    acc: dict[str, list[bool]] = {"image": [], "crop_image": []}
    for row in rows:
        for view in acc:
            text = prompt("answer_format", question=row["prompt"])
            for out in ask(exact, "sim-student", text, [row[view]["bytes"]], n=4, seed=42):
                verdict = ask(exact, "sim-judge", prompt("judge", question=row["prompt"],
                                                          reference=row["answer"], answer=out))[0]
                assert verdict in ("Yes", "No")
                acc[view].append(verdict == "Yes")
    full, crop = (sum(v) / len(v) for v in (acc["image"], acc["crop_image"]))
    print("toy benchmark accuracy: full", full, "crop", crop, "items", len(rows))
    assert crop >= 0.9 and crop - full >= 0.2, (full, crop)


def test_unrecognised_images(brain: ToyBrain) -> None:
    noise = png(Image.effect_noise((640, 480), 80).convert("RGB"))
    out = ask(brain, "sim-teacher-a", prompt("list_objects", max_objects=5), [noise])[0]
    assert boxed(out) == ""
    out = ask(brain, "sim-student", prompt("answer_format", question="What color is the cup?"), [noise])[0]
    assert _answer(out)
    out = ask(brain, "sim-teacher-a", "Tell me a joke.")[0]
    assert "simulated" in out
