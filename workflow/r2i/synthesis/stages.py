"""The synthesis stages (method stages 1-6), one item at a time.

Each ``*_one`` function takes one row of the previous stage (or, for ``objects``, one manifest
entry) and returns this stage's rows for it; :mod:`r2i.synthesis.pipeline` chains them so that an
item moves on to the next stage as soon as it is done. Model calls go through
:class:`~r2i.synthesis.runtime.ModelSet` (cached, retried, concurrent), image work through
:mod:`r2i.images` and :class:`~r2i.pngpatch.BandedPNG`, CPU work runs in threads. Seeds are
derived from item ids, so every request (and therefore every cache key) is reproducible, and the
rows do not depend on the order in which items finish.

A persistent model error on one item becomes a ``model_error`` row for that item only; an image
that cannot be decoded drops the rows that need it (``image:<reason>``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from r2i.client import ModelCallError, seed_for
from r2i.images import (
    ImageError,
    box_area_fraction,
    clamp_box,
    crop_upscale,
    decode_source,
    draw_red_box,
    encode_jpeg,
    encode_png,
    expand_box,
)
from r2i.judge import reply_verdict
from r2i.parsing import (
    ParseError,
    extract_all_boxed,
    extract_answer_tag,
    first_option_letter,
    normalize_answer,
    parse_consensus,
    parse_distractors,
    parse_numbered_list,
    parse_questions,
    parse_validation,
)
from r2i.pngpatch import BandedPNG
from r2i.prompts import PromptTemplate, sample_examples
from r2i.segment import Segmenter
from r2i.synthesis.records import Row, dropped, kept
from r2i.synthesis.runtime import ModelSet, stable_seed

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def error_rows(item_id: str, parent: str | None, err: BaseException,
               record: Mapping[str, Any] | None = None) -> list[Row]:
    """The row of an item whose model call failed for good (the job reports it at the end)."""
    rec = {**(record or {}), "error": str(err), "model_error": True}
    return [dropped(item_id, parent, "model_error", rec)]


class SourceImage:
    """One source image, shared by every item that comes from it within a job.

    Decoded at most once; its bytes for the models are the file's own when they can be sent as
    they are (:func:`r2i.images.decode_source`), else one lossless encoding; the boxed copies
    come from one banded encoding (:class:`~r2i.pngpatch.BandedPNG`). All of it is computed on
    first use, in a thread, and shared by concurrent users. An image that fails to decode raises
    the same :class:`ImageError` to every user.
    """

    def __init__(self, image_hash: str, path: str) -> None:
        self.hash, self.path = image_hash, path
        self._decoded: asyncio.Future[tuple[Image.Image, bytes | None]] | None = None
        self._banded: asyncio.Future[BandedPNG] | None = None

    def _decode(self) -> tuple[Image.Image, bytes | None]:
        try:
            data = Path(self.path).read_bytes()
        except OSError as err:
            raise ImageError(self.path, "unreadable", f"{type(err).__name__}: {err}") from err
        image, sendable = decode_source(data, self.path)
        return image, (data if sendable else None)

    async def _get_decoded(self) -> tuple[Image.Image, bytes | None]:
        if self._decoded is None:
            self._decoded = asyncio.ensure_future(asyncio.to_thread(self._decode))
        return await asyncio.shield(self._decoded)

    async def image(self) -> Image.Image:
        return (await self._get_decoded())[0]

    async def banded(self) -> BandedPNG:
        if self._banded is None:
            async def build() -> BandedPNG:
                img = await self.image()
                return await asyncio.to_thread(BandedPNG, img)

            self._banded = asyncio.ensure_future(build())
        return await asyncio.shield(self._banded)

    async def model_bytes(self) -> bytes:
        """What the models are shown for the full image: the file as stored, or its encoding."""
        _, stored = await self._get_decoded()
        if stored is not None:
            return stored
        return (await self.banded()).encode()


@dataclass(frozen=True)
class StageContext:
    """What the stage functions share within a job."""

    models: ModelSet
    prompts: Mapping[str, PromptTemplate]
    settings: Mapping[str, Mapping[str, Any]]  # stage -> its settings
    segmenter: Segmenter | None = None
    seed_questions: Sequence[str] = ()


# --------------------------------------------------------------------------- stage 1: objects
async def objects_one(ctx: StageContext, entry: Mapping[str, Any], src: SourceImage) -> list[Row]:
    """The teacher lists objects that appear once; the segmenter keeps unique, confident ones."""
    p = ctx.settings["objects"]
    template = ctx.prompts["list_objects"]
    img_id = entry["hash"]
    base = {
        "image_hash": img_id,
        "image_path": entry["path"],
        "pool": entry.get("pool"),
        "width": entry.get("width"),
        "height": entry.get("height"),
    }
    try:
        image = await src.image()
        shown = await src.model_bytes()
    except ImageError as err:
        return [dropped(img_id, None, f"image:{err.reason}", base)]
    try:
        res = await ctx.models.chat(
            "teacher", template.render(max_objects=p["max_objects"]), [(img_id, shown)],
            seed=seed_for(img_id, "objects"), temperature=p["temperature"], top_p=p["top_p"],
            max_tokens=p["max_tokens"],
        )  # fmt: skip
    except ModelCallError as err:
        return error_rows(img_id, None, err, base)
    reply = res.texts[0]
    prov = {**base, "lister_model": ctx.models.model_name("teacher"), "prompt_sha": template.sha}
    try:
        phrases = parse_numbered_list(reply)[: p["max_objects"]]
    except ParseError as err:
        return [dropped(img_id, None, f"unparseable_object_list:{err.reason}", {**prov, "reply": reply[-500:]})]
    if len(phrases) < p["min_objects"]:
        return [dropped(img_id, None, "too_few_objects", {**prov, "phrases": phrases})]
    assert ctx.segmenter is not None
    instances = await asyncio.to_thread(ctx.segmenter.segment, image, phrases)
    rows: list[Row] = []
    for j, (phrase, inst) in enumerate(zip(phrases, instances, strict=True)):
        oid = f"{img_id[:16]}-o{j:02d}"
        rec = {
            **prov,
            "object_id": oid,
            "phrase": phrase,
            "n_instances": len(inst),
            "instances": [{"box": list(i.box), "score": float(i.score)} for i in inst],
            "segmenter": ctx.segmenter.name,
        }
        if len(inst) == 0:
            rows.append(dropped(oid, img_id, "not_found", rec))
        elif len(inst) != p["max_instances"]:
            rows.append(dropped(oid, img_id, "not_unique", rec))
        elif inst[0].score < p["min_score"]:
            rows.append(dropped(oid, img_id, "low_score", rec))
        else:
            rows.append(kept(oid, img_id, {**rec, "box": list(inst[0].box), "score": float(inst[0].score)}))
    return rows


# --------------------------------------------------------------------------- stage 2: crops
def crop_rows(r: Row, image: Image.Image, p: Mapping[str, Any]) -> list[Row]:
    """Micro-crop: clamp, drop boxes covering >= max_area_fraction, crop and upscale (Lanczos)."""
    w, h = image.size
    box = clamp_box(r.record["box"], w, h)
    frac = box_area_fraction(box, w, h)
    rec = {**r.record, "crop_box": list(box), "area_fraction": frac}
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return [dropped(r.item_id, r.item_id, "degenerate_box", rec)]
    if frac >= p["max_area_fraction"]:
        return [dropped(r.item_id, r.item_id, "too_large", rec)]
    crop = crop_upscale(image, box, p["upscale"])
    rec["crop_size"] = list(crop.size)
    return [kept(r.item_id, r.item_id, rec, encode_png(crop))]


async def crops_one(ctx: StageContext, r: Row, src: SourceImage) -> list[Row]:
    try:
        image = await src.image()
    except ImageError as err:
        return [dropped(r.item_id, r.item_id, f"image:{err.reason}", r.record)]
    return await asyncio.to_thread(crop_rows, r, image, ctx.settings["crops"])


# --------------------------------------------------------------------------- stage 3: questions
async def questions_one(ctx: StageContext, r: Row, src: SourceImage) -> list[Row]:
    """The teacher writes questions from the crop alone, then validates each on full image + crop."""
    p = ctx.settings["questions"]
    writer, validator = ctx.prompts["write_questions"], ctx.prompts["validate_question"]
    models = ctx.models
    crop: bytes = r.blob  # type: ignore[assignment]
    cid = r.item_id
    examples = sample_examples(list(ctx.seed_questions), p["n_examples"], stable_seed(cid, "examples"))
    try:
        res = await models.chat(
            "teacher", writer.render(n_questions=p["per_crop"], examples=examples),
            [(f"crop:{cid}", crop)], seed=seed_for(cid, "questions"),
            temperature=p["temperature"], top_p=p["top_p"], max_tokens=p["max_tokens"],
        )  # fmt: skip
    except ModelCallError as err:
        return error_rows(f"{cid}-q*", cid, err, r.record)
    prov = {**r.record, "writer_model": models.model_name("teacher"), "writer_prompt_sha": writer.sha}
    try:
        questions = parse_questions(res.texts[0])
    except ParseError as err:
        return [dropped(f"{cid}-q*", cid, f"unparseable_questions:{err.reason}", {**prov, "reply": res.texts[0][-500:]})]
    if not questions:
        return [dropped(f"{cid}-q*", cid, "no_questions", prov)]
    questions = questions[: p["per_crop"]]
    try:
        full = await src.model_bytes()
    except ImageError as err:
        return [dropped(f"{cid}-q{k}", cid, f"image:{err.reason}", {**prov, "question": q})
                for k, q in enumerate(questions)]

    async def validate(k: int, q: str) -> Row:
        qid = f"{cid}-q{k}"
        rec = {**prov, "question_id": qid, "question": q, "validator_prompt_sha": validator.sha}
        try:
            vres = await models.chat(
                "teacher", validator.render(question=q),
                [(r.record["image_hash"], full), (f"crop:{cid}", crop)],
                seed=seed_for(qid, "validate"), temperature=p["validate_temperature"],
                max_tokens=p["validate_max_tokens"],
            )  # fmt: skip
        except ModelCallError as err:
            return error_rows(qid, cid, err, rec)[0]
        try:
            valid, why = parse_validation(vres.texts[0])
        except ParseError as err:
            return dropped(qid, cid, f"unparseable_validation:{err.reason}", rec)
        rec["validation_reason"] = why
        return kept(qid, cid, rec) if valid else dropped(qid, cid, "invalid_question", rec)

    return list(await asyncio.gather(*(validate(k, q) for k, q in enumerate(questions))))


# --------------------------------------------------------------------------- stage 4: answers
async def answers_one(ctx: StageContext, r: Row, crop: bytes) -> list[Row]:
    """4 + 4 answers from two teacher families on the crop; LLM consensus >= min_agreement."""
    p = ctx.settings["answers"]
    models = ctx.models
    answer_t, consensus_t = ctx.prompts["answer_question"], ctx.prompts["consensus"]
    k = p["samples_per_teacher"]
    qid, cid = r.item_id, r.parent_id or ""
    text = answer_t.render(question=r.record["question"])
    sampling = {"temperature": p["temperature"], "top_p": p["top_p"], "max_tokens": p["max_tokens"]}
    try:
        res_a, res_b = await asyncio.gather(
            models.chat("teacher", text, [(f"crop:{cid}", crop)], n=k, seed=seed_for(qid, "answers-a"), **sampling),
            models.chat("teacher_b", text, [(f"crop:{cid}", crop)], n=k, seed=seed_for(qid, "answers-b"), **sampling),
        )
    except ModelCallError as err:
        return error_rows(qid, qid, err, r.record)
    votes = []
    for family, res in (("teacher", res_a), ("teacher_b", res_b)):
        for t in res.texts:
            boxed = extract_all_boxed(t)
            votes.append({"model": models.model_name(family), "answer": boxed[-1] if boxed else None})
    rec = {**r.record, "votes": votes, "answer_prompt_sha": answer_t.sha}
    answers = [v["answer"] for v in votes if v["answer"]]
    n_total = len(votes)
    if not answers:
        return [dropped(qid, qid, "no_boxed_answers", rec)]
    listing = "\n".join(f"{i + 1}. {a}" for i, a in enumerate(answers))
    try:
        cres = await models.chat(
            "consensus", consensus_t.render(n_answers=len(answers), question=r.record["question"], answers=listing),
            seed=seed_for(qid, "consensus"), temperature=p["consensus_temperature"], max_tokens=512,
        )  # fmt: skip
    except ModelCallError as err:
        return error_rows(qid, qid, err, rec)
    try:
        majority, count = parse_consensus(cres.texts[0], len(answers))
    except ParseError as err:
        return [dropped(qid, qid, f"unparseable_consensus:{err.reason}", {**rec, "reply": cres.texts[0][-300:]})]
    agreement = count / n_total
    rec.update(
        ground_truth=majority, agreement=agreement, agree_count=count,
        consensus_model=models.model_name("consensus"), consensus_prompt_sha=consensus_t.sha,
    )  # fmt: skip
    if agreement < p["min_agreement"]:
        return [dropped(qid, qid, "low_agreement", rec)]
    return [kept(qid, qid, rec)]


# --------------------------------------------------------------------------- stage 5: mcq
def build_options(answer: str, distractors: Sequence[str], n: int, seed: int) -> tuple[list[str], str] | None:
    """Shuffle the answer with ``n`` distinct distractors; return (options, correct letter)."""
    seen = {normalize_answer(answer)}
    chosen: list[str] = []
    for d in distractors:
        key = normalize_answer(d)
        if key and key not in seen:
            seen.add(key)
            chosen.append(d)
        if len(chosen) == n:
            break
    if len(chosen) < n:
        return None
    options = [answer, *chosen]
    random.Random(seed).shuffle(options)
    return options, LETTERS[options.index(answer)]


def format_options(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def render_boxed(image: Image.Image, box: Sequence[float], p: Mapping[str, Any]) -> tuple[Image.Image, list[float]]:
    w, h = image.size
    big = expand_box(box, p["box_expand"], w, h)
    return draw_red_box(image, big, width=p["box_width"], color=tuple(p["box_color"])), list(big)


async def boxed_image(src: SourceImage, box: Sequence[float], p: Mapping[str, Any]) -> tuple[bytes, list[float]]:
    """The full image with the red box (expanded by ``box_expand``), encoded as ``image_format``.

    PNG comes from the image's banded encoding (only the rows the box spans are compressed
    again); JPEG draws and encodes the whole image.
    """
    image = await src.image()
    w, h = image.size
    big = list(expand_box(box, p["box_expand"], w, h))
    color = tuple(int(c) for c in p["box_color"])
    if p["image_format"] == "png":
        banded = await src.banded()
        blob = await asyncio.to_thread(banded.with_box, big, width=p["box_width"], color=color)  # type: ignore[arg-type]
    else:
        blob = await asyncio.to_thread(
            lambda: encode_jpeg(draw_red_box(image, big, width=p["box_width"], color=color))  # type: ignore[arg-type]
        )
    return blob, big


async def mcq_one(ctx: StageContext, r: Row, src: SourceImage) -> list[Row]:
    """Red box on the full image, focus instruction, teacher distractors, shuffled options A-D."""
    p = ctx.settings["mcq"]
    focus_t, distract_t, mcq_t = ctx.prompts["focus_instruction"], ctx.prompts["distractors"], ctx.prompts["mcq"]
    qid = r.item_id
    try:
        blob, big = await boxed_image(src, r.record["crop_box"], p)
    except ImageError as err:
        return [dropped(qid, qid, f"image:{err.reason}", r.record)]
    focus_q = focus_t.render(question=r.record["question"])
    rec = {**r.record, "box_expanded": big, "focus_question": focus_q, "distractor_prompt_sha": distract_t.sha}
    try:
        res = await ctx.models.chat(
            "teacher",
            distract_t.render(question=focus_q, answer=r.record["ground_truth"], n_distractors=p["n_distractors"]),
            [(f"boxed:{qid}", blob)], seed=seed_for(qid, "distractors"),
            temperature=p["temperature"], max_tokens=p["max_tokens"],
        )  # fmt: skip
    except ModelCallError as err:
        return error_rows(qid, qid, err, rec)
    try:
        distractors = parse_distractors(res.texts[0])
    except ParseError as err:
        return [dropped(qid, qid, f"unparseable_distractors:{err.reason}", {**rec, "reply": res.texts[0][-300:]})]
    built = build_options(r.record["ground_truth"], distractors, p["n_distractors"], stable_seed(qid, "shuffle"))
    if built is None:
        return [dropped(qid, qid, "too_few_distractors", {**rec, "distractors": distractors})]
    options, letter = built
    rec.update(
        options=options, answer_letter=letter,
        mcq_text=mcq_t.render(question=focus_q, options=format_options(options)),
    )  # fmt: skip
    return [kept(qid, qid, rec, blob)]


# --------------------------------------------------------------------------- stage 6: difficulty
async def difficulty_one(ctx: StageContext, r: Row) -> list[Row]:
    """The student answers the MCQ ``samples`` times; drop the item if enough are right.

    A sample counts as right when its ``<answer>`` starts with the correct option letter; other
    non-empty answers (e.g. the option text) are sent to the LLM judge.
    """
    p = ctx.settings["difficulty"]
    models = ctx.models
    fmt_t, judge_t = ctx.prompts["answer_format"], ctx.prompts["judge"]
    qid = r.item_id
    boxed: bytes = r.blob  # type: ignore[assignment]
    letter = r.record["answer_letter"]
    try:
        res = await models.chat(
            "student", fmt_t.render(question=r.record["mcq_text"]), [(f"boxed:{qid}", boxed)],
            n=p["samples"], seed=seed_for(qid, "student"), temperature=p["temperature"],
            top_p=p["top_p"], max_tokens=p["max_tokens"],
        )  # fmt: skip

        async def grade(i: int, t: str) -> dict[str, Any]:
            ans = extract_answer_tag(t)
            if not ans:
                return {"answer": None, "correct": False, "by": "no_answer_tag"}
            picked = first_option_letter(ans)
            if picked is not None:
                return {"answer": ans, "correct": picked == letter, "by": "letter"}
            jres = await models.chat(
                "judge",
                judge_t.render(question=r.record["mcq_text"], reference=f"{letter}. {r.record['ground_truth']}", answer=ans),
                seed=seed_for(qid, f"judge-{i}"), temperature=0.0, max_tokens=p["judge_max_tokens"],
            )  # fmt: skip
            # reasoning blocks stripped, Yes/No read as evaluation does; neither: counted, wrong
            correct, by = reply_verdict(jres.texts[0])
            return {"answer": ans, "correct": correct, "by": by}

        samples = list(await asyncio.gather(*(grade(i, t) for i, t in enumerate(res.texts))))
    except ModelCallError as err:
        return error_rows(qid, qid, err, r.record)
    n_right = sum(s["correct"] for s in samples)
    rec = {
        **r.record, "student_samples": samples, "student_correct": n_right,
        "student_model": models.model_name("student"), "judge_model": models.model_name("judge"),
    }  # fmt: skip
    if n_right >= p["drop_if_correct_at_least"]:
        return [dropped(qid, qid, "too_easy", rec)]
    return [kept(qid, qid, rec, r.blob)]
