"""The per-shard synthesis stages (method stages 1-6).

Every function takes the previous stage's rows and returns this stage's rows; model calls go
through :class:`~r2i.synthesis.runtime.ModelSet` (cached, retried, concurrent), image work through
:mod:`r2i.images`. Items are grouped by source image so that each image is decoded once per stage.
Seeds are derived from item ids, so every request (and therefore every cache key) is reproducible.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from PIL import Image

from r2i.client import ModelCallError, seed_for
from r2i.images import (
    ImageError,
    box_area_fraction,
    clamp_box,
    crop_upscale,
    draw_red_box,
    encode_jpeg,
    encode_png,
    expand_box,
    load_image,
)
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
from r2i.prompts import PromptTemplate, sample_examples
from r2i.segment import Segmenter
from r2i.synthesis.records import Row, dropped, kept
from r2i.synthesis.runtime import ModelSet, run_items, stable_seed

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _error_rows(item_id: str, parent: str | None, err: BaseException) -> list[Row]:
    return [dropped(item_id, parent, "model_error", {"error": str(err), "model_error": True})]


def _group_by_image(rows: Sequence[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[r.record["image_hash"]].append(r)
    return dict(sorted(groups.items()))


async def _load(path: str) -> Image.Image:
    return await asyncio.to_thread(load_image, path)


async def _per_image(
    rows: Sequence[Row],
    one: Callable[[Row, Image.Image], Awaitable[list[Row]]],
    *,
    label: str,
    concurrency: int,
    out_id: Callable[[Row], str] = lambda r: r.item_id,
) -> list[Row]:
    """Run ``one(row, image)`` for every row, decoding each source image once for its rows.

    An image that no longer decodes drops its rows (``image:<reason>``); a persistent model error
    drops only the row it happened on.
    """

    async def work(group: list[Row]) -> list[Row]:
        try:
            image = await _load(group[0].record["image_path"])
        except ImageError as err:
            return [dropped(out_id(r), r.item_id, f"image:{err.reason}", r.record) for r in group]
        parts = await asyncio.gather(*(_guard(one(r, image), out_id(r), r.item_id) for r in group))
        return [row for part in parts for row in part]

    return await run_items(
        list(_group_by_image(rows).values()), work, concurrency=concurrency, label=label,
        on_error=lambda g, err: [x for r in g for x in _error_rows(out_id(r), r.item_id, err)],
    )  # fmt: skip


# --------------------------------------------------------------------------- stage 1: objects
async def objects_stage(
    images: Sequence[Mapping[str, Any]],
    models: ModelSet,
    segmenter: Segmenter,
    prompts: Mapping[str, PromptTemplate],
    p: Mapping[str, Any],
    concurrency: int,
) -> list[Row]:
    """Teacher lists objects that appear once; the segmenter keeps unique, confident ones."""
    template = prompts["list_objects"]
    text = template.render(max_objects=p["max_objects"])

    async def work(entry: Mapping[str, Any]) -> list[Row]:
        img_id = entry["hash"]
        base = {
            "image_hash": img_id,
            "image_path": entry["path"],
            "pool": entry.get("pool"),
            "width": entry.get("width"),
            "height": entry.get("height"),
        }
        try:
            image = await _load(entry["path"])
        except ImageError as err:
            return [dropped(img_id, None, f"image:{err.reason}", base)]
        res = await models.chat(
            "teacher", text, [(img_id, image)], seed=seed_for(img_id, "objects"),
            temperature=p["temperature"], top_p=p["top_p"], max_tokens=p["max_tokens"],
        )  # fmt: skip
        reply = res.texts[0]
        prov = {**base, "lister_model": models.model_name("teacher"), "prompt_sha": template.sha}
        try:
            phrases = parse_numbered_list(reply)[: p["max_objects"]]
        except ParseError as err:
            return [dropped(img_id, None, f"unparseable_object_list:{err.reason}", {**prov, "reply": reply[-500:]})]
        if len(phrases) < p["min_objects"]:
            return [dropped(img_id, None, "too_few_objects", {**prov, "phrases": phrases})]
        instances = await asyncio.to_thread(segmenter.segment, image, phrases)
        rows: list[Row] = []
        for j, (phrase, inst) in enumerate(zip(phrases, instances, strict=True)):
            oid = f"{img_id[:16]}-o{j:02d}"
            rec = {
                **prov,
                "object_id": oid,
                "phrase": phrase,
                "n_instances": len(inst),
                "instances": [{"box": list(i.box), "score": float(i.score)} for i in inst],
                "segmenter": segmenter.name,
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

    return await run_items(
        images, work, concurrency=concurrency, label="objects",
        on_error=lambda e, err: _error_rows(e["hash"], None, err),
    )  # fmt: skip


# --------------------------------------------------------------------------- stage 2: crops
async def crops_stage(objects: Sequence[Row], p: Mapping[str, Any], concurrency: int) -> list[Row]:
    """Micro-crops: clamp, drop boxes covering >= max_area_fraction, crop and upscale (Lanczos)."""

    def crop_one(r: Row, image: Image.Image) -> list[Row]:
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

    async def one(r: Row, image: Image.Image) -> list[Row]:
        return await asyncio.to_thread(crop_one, r, image)

    return await _per_image(objects, one, label="crops (images)", concurrency=concurrency)


# --------------------------------------------------------------------------- stage 3: questions
async def questions_stage(
    crops: Sequence[Row],
    models: ModelSet,
    prompts: Mapping[str, PromptTemplate],
    seed_questions: list[str],
    p: Mapping[str, Any],
    concurrency: int,
) -> list[Row]:
    """The teacher writes questions from the crop alone, then validates each on full image + crop."""
    writer, validator = prompts["write_questions"], prompts["validate_question"]

    async def one_crop(r: Row, image: Image.Image) -> list[Row]:
        crop: bytes = r.blob  # type: ignore[assignment]
        cid = r.item_id
        examples = sample_examples(seed_questions, p["n_examples"], stable_seed(cid, "examples"))
        text = writer.render(n_questions=p["per_crop"], examples=examples)
        res = await models.chat(
            "teacher", text, [(f"crop:{cid}", crop)], seed=seed_for(cid, "questions"),
            temperature=p["temperature"], top_p=p["top_p"], max_tokens=p["max_tokens"],
        )  # fmt: skip
        prov = {**r.record, "writer_model": models.model_name("teacher"), "writer_prompt_sha": writer.sha}
        try:
            questions = parse_questions(res.texts[0])
        except ParseError as err:
            return [dropped(f"{cid}-q*", cid, f"unparseable_questions:{err.reason}", {**prov, "reply": res.texts[0][-500:]})]
        if not questions:
            return [dropped(f"{cid}-q*", cid, "no_questions", prov)]
        async def validate(k: int, q: str) -> Row:
            qid = f"{cid}-q{k}"
            vres = await models.chat(
                "teacher", validator.render(question=q),
                [(r.record["image_hash"], image), (f"crop:{cid}", crop)],
                seed=seed_for(qid, "validate"), temperature=p["validate_temperature"],
                max_tokens=p["validate_max_tokens"],
            )  # fmt: skip
            rec = {**prov, "question_id": qid, "question": q, "validator_prompt_sha": validator.sha}
            try:
                valid, why = parse_validation(vres.texts[0])
            except ParseError as err:
                return dropped(qid, cid, f"unparseable_validation:{err.reason}", rec)
            rec["validation_reason"] = why
            return kept(qid, cid, rec) if valid else dropped(qid, cid, "invalid_question", rec)

        return list(await asyncio.gather(*(validate(k, q) for k, q in enumerate(questions[: p["per_crop"]]))))

    return await _per_image(
        crops, one_crop, label="questions (images)", concurrency=concurrency,
        out_id=lambda r: f"{r.item_id}-q*",
    )  # fmt: skip


async def _guard(coro: Any, item_id: str, parent: str | None) -> list[Row]:
    """Turn one item's persistent model error into a row instead of failing its whole group."""
    try:
        return await coro
    except ModelCallError as err:
        return _error_rows(item_id, parent, err)


# --------------------------------------------------------------------------- stage 4: answers
async def answers_stage(
    questions: Sequence[Row],
    crop_blobs: Mapping[str, bytes],
    models: ModelSet,
    prompts: Mapping[str, PromptTemplate],
    p: Mapping[str, Any],
    concurrency: int,
) -> list[Row]:
    """4 + 4 answers from two teacher families on the crop; LLM consensus >= min_agreement."""
    answer_t, consensus_t = prompts["answer_question"], prompts["consensus"]
    k = p["samples_per_teacher"]

    async def work(r: Row) -> list[Row]:
        qid, cid = r.item_id, r.parent_id or ""
        crop = crop_blobs[cid]
        text = answer_t.render(question=r.record["question"])
        sampling = {"temperature": p["temperature"], "top_p": p["top_p"], "max_tokens": p["max_tokens"]}
        res_a, res_b = await asyncio.gather(
            models.chat("teacher", text, [(f"crop:{cid}", crop)], n=k, seed=seed_for(qid, "answers-a"), **sampling),
            models.chat("teacher_b", text, [(f"crop:{cid}", crop)], n=k, seed=seed_for(qid, "answers-b"), **sampling),
        )
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
        cres = await models.chat(
            "consensus", consensus_t.render(n_answers=len(answers), question=r.record["question"], answers=listing),
            seed=seed_for(qid, "consensus"), temperature=p["consensus_temperature"], max_tokens=512,
        )  # fmt: skip
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

    return await run_items(
        list(questions), work, concurrency=concurrency, label="answers",
        on_error=lambda r, err: _error_rows(r.item_id, r.item_id, err),
    )  # fmt: skip


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


async def mcq_stage(
    answers: Sequence[Row],
    models: ModelSet,
    prompts: Mapping[str, PromptTemplate],
    p: Mapping[str, Any],
    concurrency: int,
) -> list[Row]:
    """Red box on the full image, focus instruction, teacher distractors, shuffled options A-D."""
    focus_t, distract_t, mcq_t = prompts["focus_instruction"], prompts["distractors"], prompts["mcq"]

    async def one(r: Row, image: Image.Image) -> list[Row]:
        qid = r.item_id
        encode = encode_png if p["image_format"] == "png" else encode_jpeg

        def boxed_bytes() -> tuple[bytes, list[float]]:
            img, big = render_boxed(image, r.record["crop_box"], p)
            return encode(img), big

        blob, big = await asyncio.to_thread(boxed_bytes)
        focus_q = focus_t.render(question=r.record["question"])
        res = await models.chat(
            "teacher",
            distract_t.render(question=focus_q, answer=r.record["ground_truth"], n_distractors=p["n_distractors"]),
            [(f"boxed:{qid}", blob)], seed=seed_for(qid, "distractors"),
            temperature=p["temperature"], max_tokens=p["max_tokens"],
        )  # fmt: skip
        rec = {**r.record, "box_expanded": big, "focus_question": focus_q, "distractor_prompt_sha": distract_t.sha}
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

    return await _per_image(answers, one, label="mcq (images)", concurrency=concurrency)


# --------------------------------------------------------------------------- stage 6: difficulty
async def difficulty_stage(
    mcqs: Sequence[Row],
    models: ModelSet,
    prompts: Mapping[str, PromptTemplate],
    p: Mapping[str, Any],
    concurrency: int,
) -> list[Row]:
    """The student answers each MCQ ``samples`` times; drop the item if enough are right.

    A sample counts as right when its ``<answer>`` starts with the correct option letter; other
    non-empty answers (e.g. the option text) are sent to the LLM judge.
    """
    fmt_t, judge_t = prompts["answer_format"], prompts["judge"]

    async def work(r: Row) -> list[Row]:
        qid = r.item_id
        boxed: bytes = r.blob  # type: ignore[assignment]
        res = await models.chat(
            "student", fmt_t.render(question=r.record["mcq_text"]), [(f"boxed:{qid}", boxed)],
            n=p["samples"], seed=seed_for(qid, "student"), temperature=p["temperature"],
            top_p=p["top_p"], max_tokens=p["max_tokens"],
        )  # fmt: skip
        letter = r.record["answer_letter"]

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
                seed=seed_for(qid, f"judge-{i}"), temperature=0.0, max_tokens=16,
            )  # fmt: skip
            return {"answer": ans, "correct": jres.texts[0].strip().lower().startswith("yes"), "by": "judge"}

        samples = list(await asyncio.gather(*(grade(i, t) for i, t in enumerate(res.texts))))
        n_right = sum(s["correct"] for s in samples)
        rec = {
            **r.record, "student_samples": samples, "student_correct": n_right,
            "student_model": models.model_name("student"), "judge_model": models.model_name("judge"),
        }  # fmt: skip
        if n_right >= p["drop_if_correct_at_least"]:
            return [dropped(qid, qid, "too_easy", rec)]
        return [kept(qid, qid, rec, r.blob)]

    return await run_items(
        list(mcqs), work, concurrency=concurrency, label="difficulty",
        on_error=lambda r, err: _error_rows(r.item_id, r.item_id, err),
    )  # fmt: skip
