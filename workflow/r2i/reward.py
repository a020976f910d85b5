"""GRPO reward for verl: the method's answer checks plus an LLM judge for undecided answers.

Score of one response (spec "Training (GRPO)"): the student is prompted to think first and put
its final answer in ``<answer> </answer>``; the content of the FIRST complete
``<answer>...</answer>`` outside reasoning blocks (:func:`r2i.parsing.extract_answer_tag`, the
one rule shared with evaluation and with the paper's reference code) is checked by :func:`r2i.judge.rule_verdict` (empty -> 0, 300+ chars -> 0, normalized match -> 1,
MCQ first option letter, math-style equivalence -> 1) and, if undecided, by the LLM judge.
A response without a complete ``<answer>...</answer>`` block gets acc 0 (source
``"no_answer_tag"``): the whole response is NOT used as the answer, otherwise the policy could
skip the format and still be paid (evaluation, which also scores models never trained on the
format, falls back to an ``Answer:`` line or the last lines instead: :func:`r2i.parsing.extract_answer`).
This is stricter than the reference reward, which uses the whole response when the tags are
missing (docs/training.md says why we keep it). ``format`` is 1.0 when the response has exactly one opening
and one closing tag forming one block, else 0.0, and
``score = (1 - format_weight) * acc + format_weight * format`` with the method's
``format_weight = 0`` by default.

Every function returns, per sample, ``{"score", "acc", "format", "source", "pred"}``: verl puts
``score`` into the reward tensor and every key into ``reward_extra_info``; in validation it
reports mean/std/best/worst of the numeric keys (``acc`` is the headline accuracy), skips the
string keys, and uses ``pred`` for majority voting (``maj@N``), so ``pred`` is canonical: the
option letter for an MCQ when one can be read, else the normalized answer.

verl configuration (verl >= 0.7 reward loop, the default in 0.9; YAML or Hydra overrides;
``reward_kwargs`` is not in verl's default config, so its keys need a leading ``+`` on the
command line, or ``++`` where a config already defines them)::

    reward.reward_manager.name=naive                       # per-sample manager (default)
    reward.custom_reward_function.path=workflow/r2i/reward.py   # or pkg://r2i.reward
    reward.custom_reward_function.name=compute_score       # sync, or compute_score_async
    +reward.custom_reward_function.reward_kwargs.judge_base_url=http://HOST:PORT/v1
    +reward.custom_reward_function.reward_kwargs.judge_model=judge
    +reward.custom_reward_function.reward_kwargs.judge_api_key_env=JUDGE_API_KEY   # optional
    +reward.custom_reward_function.reward_kwargs.judge_max_concurrency=64
    +reward.custom_reward_function.reward_kwargs.judge_timeout_s=60
    +reward.custom_reward_function.reward_kwargs.judge_max_retries=3
    +reward.custom_reward_function.reward_kwargs.judge_cache_dir=results/cache/judge
    +reward.custom_reward_function.reward_kwargs.format_weight=0.0

verl passes ``reward_kwargs`` as keyword arguments to every call (they win over its own kwargs).
Other judge keys: ``judge_prompt_path`` (default: the shipped ``r2i/data/prompts/judge.txt``,
package data, so it is found in a wheel or an image that copies ``workflow/`` only),
``judge_max_tokens`` (2048: room for a thinking judge's reasoning before its verdict),
``judge_failure_threshold`` (5) and ``judge_cooldown_s`` (30) of the
circuit breaker, ``judge_backoff_max_s`` (10). An unknown ``judge_*`` key is an error (a typo
would otherwise silently disable the judge); keys verl adds itself (``reward_router_address``,
...) are ignored. Without ``judge_base_url``/``judge_model``, undecided answers score 0 with
source ``"no_judge"``.

Which function:

* ``compute_score`` (sync): verl's reward loop runs sync functions in a thread pool, one
  sample per call; each call submits its judge request to the process's private event loop
  thread (:func:`r2i.judge.shared_judge_thread`: one loop, one HTTP session and cache per judge
  config, reused by every call) and blocks, so samples handled by different threads are judged
  concurrently.
* ``compute_score_async``: the same, awaited by the reward loop itself (no thread per pending
  sample); recommended with the reward loop.
* ``compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs)``:
  for the ``batch`` reward manager of earlier verl releases (``reward_model.reward_manager=batch``
  and ``custom_reward_function.name=compute_score_batch``); judges all undecided samples of the
  batch concurrently.

The judge's question and reference come from ``extra_info`` as written by the dataset stage
(``focus_question``/``question`` + ``options``; ``answer_text``), so the judge sees the options
and ``"B. red"`` and can accept an answer that gives the option's text instead of its letter.
If the judge is unreachable after its retries, the sample gets the documented fallback of
:class:`r2i.judge.LLMJudge` (source ``"judge_unavailable"``, score 0 unless a rule decided);
nothing is raised.

This module keeps no state of its own, so verl may load it under any module name (by file path).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from r2i.judge import (
    DEFAULT_JUDGE_PROMPT,
    MAX_ANSWER_CHARS,
    JudgeSettings,
    answer_letter,
    judge_question,
    judge_reference,
    mcq_letter,
    rule_verdict,
    shared_judge_thread,
)
from r2i.parsing import extract_answer_tag, normalize_answer

__all__ = [
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
    "format_score",
    "judge_settings",
]

log = logging.getLogger("r2i.reward")

_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_BLOCK = re.compile(r"<answer>.*?</answer>", re.IGNORECASE | re.DOTALL)

#: reward kwarg -> (JudgeSettings field, type)
_JUDGE_KEYS: dict[str, tuple[str, type]] = {
    "judge_base_url": ("base_url", str),
    "judge_model": ("model", str),
    "judge_api_key_env": ("api_key_env", str),
    "judge_max_concurrency": ("max_concurrency", int),
    "judge_timeout_s": ("timeout_s", float),
    "judge_max_retries": ("max_retries", int),
    "judge_backoff_max_s": ("backoff_max_s", float),
    "judge_cache_dir": ("cache_dir", str),
    "judge_prompt_path": ("prompt_path", str),
    "judge_max_tokens": ("max_tokens", int),
    "judge_failure_threshold": ("failure_threshold", int),
    "judge_cooldown_s": ("cooldown_s", float),
}


def format_score(solution_str: str) -> float:
    """1.0 when the response has exactly one ``<answer>...</answer>`` block (and no stray tag)."""
    s = solution_str or ""
    ok = len(_OPEN.findall(s)) == 1 and len(_CLOSE.findall(s)) == 1 and len(_BLOCK.findall(s)) == 1
    return 1.0 if ok else 0.0


def judge_settings(kwargs: Mapping[str, Any]) -> JudgeSettings | None:
    """The judge configured by verl's ``reward_kwargs`` (None: no judge configured)."""
    unknown = sorted(k for k in kwargs if k.startswith("judge_") and k not in _JUDGE_KEYS)
    if unknown:
        raise ValueError(f"unknown reward_kwargs {unknown}; known: {sorted(_JUDGE_KEYS)}")
    values: dict[str, Any] = {}
    for key, (field, typ) in _JUDGE_KEYS.items():
        v = kwargs.get(key)
        if v is not None and v != "":
            values[field] = typ(v)
    if not values.get("base_url") or not values.get("model"):
        if values:
            missing = [k for k in ("judge_base_url", "judge_model") if not kwargs.get(k)]
            raise ValueError(f"judge reward_kwargs given without {missing}")
        return None
    values.setdefault("prompt_path", str(DEFAULT_JUDGE_PROMPT))
    return JudgeSettings(**values)


def _format_weight(kwargs: Mapping[str, Any]) -> float:
    w = float(kwargs.get("format_weight", 0.0) or 0.0)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {w}")
    return w


def _seq(value: Any) -> list[str]:
    """A list of strings from a list, tuple or numpy array (parquet gives arrays)."""
    if value is None or isinstance(value, str | bytes):
        return []
    try:
        return [str(v) for v in value]
    except TypeError:
        return []


class _Sample:
    """One response, scored by the rules; ``pending`` when only the judge can decide."""

    __slots__ = ("acc", "answer", "fmt", "pred", "question", "reference", "source", "truth")

    def __init__(self, solution_str: Any, ground_truth: Any, extra_info: Any) -> None:
        text = solution_str if isinstance(solution_str, str) else str(solution_str or "")
        self.truth = str(ground_truth if ground_truth is not None else "").strip()
        self.fmt = format_score(text)
        self.answer = extract_answer_tag(text)
        self.question = self.reference = ""
        self.acc: float | None
        if self.answer is None:
            self.acc, self.source = 0.0, "no_answer_tag"
        else:
            value, self.source = rule_verdict(self.answer, self.truth)
            self.acc = None if value is None else float(value)
            if value is None:
                info = extra_info if isinstance(extra_info, Mapping) else {}
                options = _seq(info.get("options"))
                q = str(info.get("mcq_text") or info.get("focus_question")
                        or info.get("question") or "")
                self.question = judge_question(q, options)
                self.reference = judge_reference(self.truth, options, info.get("answer_text"))
        self.pred = self._pred()

    def _pred(self) -> str:
        if self.answer is None:
            return ""
        if mcq_letter(self.truth) is not None:
            letter = answer_letter(self.answer)
            if letter is not None:
                return letter
        return normalize_answer(self.answer)[:MAX_ANSWER_CHARS]

    @property
    def pending(self) -> bool:
        return self.acc is None

    def resolve(self, value: bool, source: str) -> None:
        self.acc, self.source = float(value), source

    def result(self, w: float) -> dict[str, Any]:
        acc = float(self.acc or 0.0)
        return {
            "score": (1.0 - w) * acc + w * self.fmt,
            "acc": acc,
            "format": self.fmt,
            "source": self.source,
            "pred": self.pred,
        }


def _no_judge(samples: Sequence[_Sample]) -> None:
    for s in samples:
        if s.pending:
            s.resolve(False, "no_judge")


def _judge_sync(settings: JudgeSettings, samples: Sequence[_Sample]) -> None:
    """Judge the pending samples on the process's private loop; the fallback on any failure."""
    pending = [s for s in samples if s.pending]
    if not pending:
        return
    runner = shared_judge_thread()
    judge = runner.judge(settings)
    items = [(s.question, s.reference, s.answer or "", s.truth) for s in pending]
    try:
        verdicts = runner.run(judge.verdicts(items), timeout_s=settings.deadline_s())
    except Exception as exc:  # a timeout included: never crash a training step
        log.warning("judge did not answer %d sample(s) in time (%s); using the fallback",
                    len(pending), type(exc).__name__)
        verdicts = []
        for s in pending:
            value, _ = rule_verdict(s.answer or "", s.truth)
            verdicts.append((bool(value), "judge_unavailable"))
    for s, (value, source) in zip(pending, verdicts, strict=True):
        s.resolve(value, source)


def compute_score(data_source: Any, solution_str: str, ground_truth: Any,
                  extra_info: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """verl's per-sample custom reward (sync); see the module docstring for the config keys."""
    w = _format_weight(kwargs)
    settings = judge_settings(kwargs)
    sample = _Sample(solution_str, ground_truth, extra_info)
    if sample.pending:
        if settings is None:
            _no_judge([sample])
        else:
            _judge_sync(settings, [sample])
    return sample.result(w)


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any,
                              extra_info: Mapping[str, Any] | None = None,
                              **kwargs: Any) -> dict[str, Any]:
    """:func:`compute_score` for callers that await (verl's reward loop detects coroutines).

    The judge still runs on the process's private loop (one client per process, whatever loop
    the caller uses); this coroutine only waits for it.
    """
    w = _format_weight(kwargs)
    settings = judge_settings(kwargs)
    # The rules may call the math grader (milliseconds, at worst its time limit): off the loop.
    sample = await asyncio.get_running_loop().run_in_executor(
        None, _Sample, solution_str, ground_truth, extra_info)
    if sample.pending:
        if settings is None:
            _no_judge([sample])
        else:
            runner = shared_judge_thread()
            judge = runner.judge(settings)
            fut = runner.submit(judge.verdict(sample.question, sample.reference,
                                              sample.answer or "", ground_truth=sample.truth))
            try:
                value, source = await asyncio.wait_for(asyncio.wrap_future(fut),
                                                       settings.deadline_s())
            except Exception as exc:  # never crash a training step
                fut.cancel()
                log.warning("judge did not answer in time (%s); using the fallback",
                            type(exc).__name__)
                rv, _ = rule_verdict(sample.answer or "", sample.truth)
                value, source = bool(rv), "judge_unavailable"
            sample.resolve(value, source)
    return sample.result(w)


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any],
                        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
                        **kwargs: Any) -> list[dict[str, Any]]:
    """Batch form for verl's ``batch`` reward manager: every undecided sample judged at once."""
    w = _format_weight(kwargs)
    settings = judge_settings(kwargs)
    n = len(solution_strs)
    if len(ground_truths) != n:
        raise ValueError(f"{n} solutions but {len(ground_truths)} ground truths")
    infos: Sequence[Any] = extra_infos if extra_infos is not None else [None] * n
    samples = [_Sample(s, g, e) for s, g, e in zip(solution_strs, ground_truths, infos, strict=True)]
    if settings is None:
        _no_judge(samples)
    else:
        _judge_sync(settings, samples)
    return [s.result(w) for s in samples]
