"""Judging of evaluation records: answer extraction (with the reference's fallbacks), rules, then
the optional LLM judge."""

from __future__ import annotations

import asyncio
from typing import Any

from r2i.evaluation.benchmarks import EvalItem
from r2i.evaluation.infer import judge_records

ITEMS = [
    EvalItem(id="mcq", images=[b""], query="Color?\nA. red\nB. blue", reference="B",
             options=["red", "blue"]),
    EvalItem(id="open", images=[b""], query="What is written?", reference="SALE"),
    EvalItem(id="num", images=[b""], query="How many?", reference="3"),
]


class FakeJudge:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []

    async def grade(self, question: str, ground_truth: str, answer: str, *,
                    reference: str | None = None, max_chars: int | None = None) -> tuple[bool, str]:
        from r2i.judge import rule_verdict

        value, source = rule_verdict(answer, ground_truth, max_chars=max_chars)
        if value is not None:
            return value, source
        self.asked.append((question, reference or "", answer))
        return answer.lower().startswith("sale"), "judge"


def _recs(responses: dict[str, str | None], error: str | None = None) -> list[dict[str, Any]]:
    return [{"id": k, "response": v, "error": error} for k, v in responses.items()]


def test_rules_then_judge() -> None:
    judge = FakeJudge()
    recs = _recs({"mcq": "<think>..</think><answer>(B) blue</answer>",
                  "open": "<answer>SALE sign text: Sale!</answer>", "num": "<answer>three</answer>"})
    asyncio.run(judge_records(recs, ITEMS, judge))  # type: ignore[arg-type]
    got = {r["id"]: (r["correct"], r["verdict_source"]) for r in recs}
    assert got == {"mcq": (True, "mcq_letter"), "open": (True, "judge"), "num": (True, "exact")}
    assert len(judge.asked) == 1 and judge.asked[0][2] == "SALE sign text: Sale!"


def test_without_judge_and_failures() -> None:
    recs = _recs({"mcq": "", "open": "<answer>SALE sign</answer>", "num": None})
    recs[2]["error"] = "timeout"
    asyncio.run(judge_records(recs, ITEMS, None))
    got = {r["id"]: (r["correct"], r["verdict_source"]) for r in recs}
    assert got == {"mcq": (False, "no_answer"), "open": (False, "undecided_no_judge"),
                   "num": (False, "model_error")}


def test_replies_without_tags_fall_back_like_the_reference_and_are_counted() -> None:
    """Models never trained on the tag format are scored: an ``Answer:`` line, else the last
    lines, then rules and judge; metrics.json counts the verdicts that came from a fallback."""
    from r2i.evaluation.metrics import build_metrics

    judge = FakeJudge()
    recs = _recs({"mcq": "The mug is clearly blue.\nAnswer: B",
                  "open": "I can read the word on the sign.\nIt says SALE.",
                  "num": "<think>one, two, three</think>\n<answer>3</answer>"})
    asyncio.run(judge_records(recs, ITEMS, judge))  # type: ignore[arg-type]
    got = {r["id"]: (r["correct"], r["verdict_source"], r["answer_source"]) for r in recs}
    assert got == {"mcq": (True, "exact", "answer_line"),
                   "open": (False, "judge", "last_lines"),  # the judge saw the last lines
                   "num": (True, "exact", "tag")}
    assert judge.asked[0][2] == "I can read the word on the sign.\nIt says SALE."
    for r, it in zip(recs, ITEMS, strict=True):
        r.update(dimension="d", latency_s=1.0, id=it.id)
    view = build_metrics({"full": recs}, model="m", benchmark="b", n_boot=100)["views"]["full"]
    assert view["fallback_verdicts"] == {"n": 2, "correct": 1}
    assert view["answer_sources"] == {"answer_line": 1, "last_lines": 1, "tag": 1}
    assert view["judge"] == {"calls": 1, "unparsed": 0, "unavailable": 0}
