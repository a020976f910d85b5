"""Single-pass inference over an OpenAI-compatible endpoint, and judging.

One request per item and view (``full``: the benchmark images; ``crop``: the crop images), with
the method's sampling (:class:`Sampling`) and a system prompt that asks for reasoning and then
``<answer>`` tags. Requests go through :class:`r2i.client.ModelClient`, so a rerun answers every
finished request from the persistent call cache (resumable) and only sends what is missing.

Judging (:func:`judge_records`): the answer is extracted as the paper's reference evaluation does
(:func:`r2i.parsing.extract_answer`: the first ``<answer>`` block, else an unclosed ``<answer>``,
an ``Answer:`` line, or the last lines; recorded as ``answer_source``), then checked by the rules
of :func:`r2i.judge.rule_verdict` (exact, MCQ letter, math) and, only when they cannot decide, by
the optional LLM judge (:class:`r2i.judge.LLMJudge`, which falls back to the rules when the judge
endpoint is down). Evaluation falls back because it also scores models never trained on the tag
format (base models, peers); the GRPO reward does not (:mod:`r2i.reward`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from r2i.client import ModelCallError, ModelClient, user_message
from r2i.images import decode_image, encode_png, resize_to_max_pixels
from r2i.judge import LLMJudge, judge_question, judge_reference, rule_verdict
from r2i.parsing import extract_answer
from r2i.synthesis.runtime import Progress

from .benchmarks import EvalItem

__all__ = ["Sampling", "build_messages", "fit_image", "gather_limited", "infer_item", "judge_records",
           "run_inference"]

#: How the answer was found (r2i.parsing.extract_answer); all but "tag" are fallbacks.
FALLBACK_SOURCES = ("unclosed_tag", "answer_line", "last_lines")

log = logging.getLogger("r2i.evaluation")

SINGLE_PASS_VIEWS = ("full", "crop")


@dataclass(frozen=True)
class Sampling:
    """The method's evaluation sampling (spec, "Evaluation").

    ``top_k`` and ``presence_penalty`` are not core OpenAI fields: they travel as extra body
    fields (vLLM reads both; other servers ignore unknown fields or take ``presence_penalty``).
    """

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    presence_penalty: float = 1.5
    max_tokens: int = 8192
    seed: int = 42

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> Sampling:
        return cls(**dict(data or {}))

    def extra(self) -> dict[str, Any]:
        """Body fields beyond the client's core arguments."""
        return {"top_k": self.top_k, "presence_penalty": self.presence_penalty}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_image(data: bytes, max_pixels: int | None) -> bytes:
    """``data`` as stored when it fits ``max_pixels`` (or no limit), else downscaled (PNG)."""
    if not max_pixels:
        return data
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height <= max_pixels:
            return data
    return encode_png(resize_to_max_pixels(decode_image(data), max_pixels))


def build_messages(system_prompt: str, item: EvalItem, view: str,
                   max_pixels: int | None = None) -> list[dict[str, Any]]:
    """``[system, user(images of the view, then the query)]`` for one single-pass request."""
    msgs: list[dict[str, Any]] = []
    if system_prompt.strip():
        msgs.append({"role": "system", "content": system_prompt.strip()})
    images = [fit_image(b, max_pixels) for b in item.view_images(view)]
    msgs.append(user_message(item.query, images))
    return msgs


def _base_record(item: EvalItem, view: str, model: str) -> dict[str, Any]:
    return {"id": item.id, "dimension": item.dimension, "view": view, "model": model,
            "query": item.query, "reference": item.reference}


async def infer_item(client: ModelClient, model: str, item: EvalItem, view: str,
                     system_prompt: str, sampling: Sampling,
                     max_pixels: int | None = None,
                     extra_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One item, one view: the response, its latency and tokens (or the error).

    ``latency_s`` is the request's (as recorded in the cache for a cached call); ``item_s`` the
    wall time of the whole item here (message building included), ``call_wall_s`` the part spent
    waiting for the call. ``extra_fields`` are further body fields (the latency probe's tag)."""
    rec = _base_record(item, view, model)
    t_item = time.perf_counter()
    msgs = await asyncio.to_thread(build_messages, system_prompt, item, view, max_pixels)
    t0 = time.perf_counter()
    try:
        res = await client.chat(model, msgs, n=1,
                                seed=sampling.seed, temperature=sampling.temperature,
                                top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                                extra={**sampling.extra(), **(extra_fields or {})})
    except ModelCallError as exc:
        now = time.perf_counter()
        rec.update(response=None, error=str(exc), latency_s=now - t0, item_s=now - t_item,
                   call_wall_s=now - t0, prompt_tokens=0, completion_tokens=0, cached=False)
        return rec
    now = time.perf_counter()
    rec.update(response=res.texts[0], error=None, latency_s=res.latency_s,
               item_s=now - t_item, call_wall_s=now - t0,
               prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens,
               cached=res.cached)
    return rec


async def gather_limited(fns: Sequence[Callable[[], Awaitable[dict[str, Any]]]],
                         concurrency: int, label: str = "") -> list[dict[str, Any]]:
    """Run ``fns`` with at most ``concurrency`` in flight; results in input order. Progress
    (items done, rate, ETA) is logged every 10 s and at the end."""
    sem = asyncio.Semaphore(max(1, concurrency))
    progress = Progress(label or "items", len(fns))

    async def one(fn: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        async with sem:
            out = await fn()
        progress.step()
        return out

    return list(await asyncio.gather(*(one(f) for f in fns)))


async def run_inference(client: ModelClient, model: str, items: Sequence[EvalItem], view: str,
                        system_prompt: str, sampling: Sampling, concurrency: int = 16,
                        max_pixels: int | None = None) -> list[dict[str, Any]]:
    """Single-pass records of every item in ``view`` (``full`` or ``crop``), in item order;
    images above ``max_pixels`` are downscaled before sending."""
    if view not in SINGLE_PASS_VIEWS:
        raise ValueError(f"single-pass view must be one of {SINGLE_PASS_VIEWS}, not {view!r}")

    def make(it: EvalItem) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: infer_item(client, model, it, view, system_prompt, sampling, max_pixels)

    return await gather_limited([make(it) for it in items], concurrency, f"{model}/{view}")


async def _judge_one(rec: dict[str, Any], item: EvalItem, judge: LLMJudge | None) -> None:
    if rec.get("skipped"):
        return
    response = rec.get("response")
    answer, source = extract_answer(response) if isinstance(response, str) else (None, None)
    rec.update(answer=answer, answer_source=source)
    if rec.get("error"):
        rec.update(correct=False, verdict_source="model_error")
        return
    if answer is None:
        rec.update(correct=False, verdict_source="no_answer")
        return
    if judge is None:
        value, source = rule_verdict(answer, item.reference, max_chars=None)
        if value is None:
            value, source = False, "undecided_no_judge"
    else:
        value, source = await judge.grade(
            judge_question(item.query, item.options), item.reference, answer,
            reference=judge_reference(item.reference, item.options), max_chars=None)
    rec.update(correct=bool(value), verdict_source=source)


async def judge_records(records: Sequence[dict[str, Any]], items: Sequence[EvalItem],
                        judge: LLMJudge | None = None) -> list[dict[str, Any]]:
    """Add ``answer``, ``correct`` and ``verdict_source`` to each record (in place)."""
    by_id = {it.id: it for it in items}
    await asyncio.gather(*(_judge_one(r, by_id[r["id"]], judge) for r in records))
    return list(records)
