"""Tolerant parsers for model output.

Models wrap answers in code fences, add stray prose, forget a closing brace, or are cut off.
Every parser here either returns a value or raises :class:`ParseError` with a short reason code
(`no_boxed`, `no_json`, ...), which stages record as the item's drop reason instead of crashing.
"""

from __future__ import annotations

import json
import re
from typing import Any


class ParseError(ValueError):
    """Model output could not be parsed; ``reason`` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_FENCE = re.compile(r"```(?:[A-Za-z0-9_+-]*)\s*\n?(.*?)```", re.DOTALL)


def strip_code_fences(text: str) -> str:
    """Return the content of the first fenced block if there is one, else the text."""
    m = _FENCE.search(text)
    if m:
        return m.group(1).strip()
    # An opening fence with no closing one (truncated reply).
    if text.lstrip().startswith("```"):
        return text.lstrip()[3:].split("\n", 1)[-1].strip()
    return text.strip()


def extract_all_boxed(text: str) -> list[str]:
    r"""Contents of every ``\boxed{...}`` (and ``\fbox{...}``), with nested braces balanced."""
    out: list[str] = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1].strip())
    return out


def extract_boxed(text: str) -> str:
    r"""The last ``\boxed{...}`` content of a reply (the final answer)."""
    found = extract_all_boxed(text or "")
    if not found:
        raise ParseError("no_boxed", (text or "")[-80:])
    return found[-1]


_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s*(.+?)\s*$")


def parse_numbered_list(text: str) -> list[str]:
    """Items of a numbered or bulleted list, taken from the last ``\\boxed{}`` when present."""
    try:
        body = extract_boxed(text)
    except ParseError:
        body = strip_code_fences(text or "")
    items: list[str] = []
    for line in body.splitlines():
        m = _NUMBERED.match(line)
        if m:
            item = m.group(1).strip()
            if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'":
                item = item[1:-1].strip()
            if item:
                items.append(item)
    if not items and "\n" not in body.strip() and ";" in body:
        items = [p.strip() for p in body.split(";") if p.strip()]
    # De-duplicate case-insensitively, keep order.
    seen: set[str] = set()
    unique = []
    for it in items:
        k = it.lower()
        if k not in seen:
            seen.add(k)
            unique.append(it)
    if not unique:
        raise ParseError("no_list", (text or "")[-80:])
    return unique


def parse_json_payload(text: str) -> Any:
    """The first JSON array or object in ``text`` (code fences and prose around it are ignored)."""
    body = strip_code_fences(text or "")
    for candidate in (body, text or ""):
        try:
            return json.loads(candidate)
        except (json.JSONDecodeError, TypeError):
            pass
        decoder = json.JSONDecoder()
        for i, ch in enumerate(candidate):
            if ch in "[{":
                try:
                    value, _ = decoder.raw_decode(candidate, i)
                    return value
                except json.JSONDecodeError:
                    continue
    raise ParseError("no_json", (text or "")[-80:])


def parse_questions(text: str) -> list[str]:
    """Questions from a JSON list of ``{"question": ...}`` (plain strings are accepted too)."""
    payload = parse_json_payload(text)
    if isinstance(payload, dict):
        payload = payload.get("questions", [payload])
    if not isinstance(payload, list):
        raise ParseError("not_a_list", type(payload).__name__)
    questions: list[str] = []
    for entry in payload:
        q = entry.get("question") if isinstance(entry, dict) else entry
        if isinstance(q, str) and q.strip():
            questions.append(q.strip())
    return questions


_VALID = re.compile(r"VALID\s*[:：]\s*\**\s*(yes|no|true|false)", re.IGNORECASE)
_REASON = re.compile(r"REASON\s*[:：]\s*(.+)", re.IGNORECASE | re.DOTALL)


def parse_validation(text: str) -> tuple[bool, str]:
    """``(valid, reason)`` from a ``VALID: Yes/No`` + ``REASON: ...`` reply."""
    m = _VALID.search(text or "")
    if not m:
        raise ParseError("no_verdict", (text or "")[-80:])
    r = _REASON.search(text or "")
    reason = r.group(1).strip().splitlines()[0] if r else ""
    return m.group(1).lower() in ("yes", "true"), reason


def parse_consensus(text: str, n_answers: int) -> tuple[str, int]:
    """``(majority_answer, count)``; the count is clamped to the number of answers shown."""
    payload = parse_json_payload(text)
    if not isinstance(payload, dict):
        raise ParseError("not_an_object", type(payload).__name__)
    answer = payload.get("majority_answer", payload.get("answer"))
    count = payload.get("count", payload.get("votes"))
    if not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
        raise ParseError("no_majority_answer", str(payload)[:80])
    try:
        count_i = int(count)
    except (TypeError, ValueError):
        raise ParseError("no_count", str(payload)[:80]) from None
    return str(answer).strip(), max(0, min(count_i, n_answers))


def parse_distractors(text: str) -> list[str]:
    payload = parse_json_payload(text)
    if isinstance(payload, dict):
        payload = payload.get("distractors", payload.get("options"))
    if not isinstance(payload, list):
        raise ParseError("no_distractors", (text or "")[-80:])
    return [str(x).strip() for x in payload if isinstance(x, (str, int, float)) and str(x).strip()]


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPEN_TAG = re.compile(r"<answer>", re.IGNORECASE)
#: Reasoning blocks models emit before answering (Qwen3/DeepSeek ``<think>``, others spell it
#: ``<thinking>``/``<reasoning>``); closed blocks only.
REASONING_BLOCK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.DOTALL | re.IGNORECASE)
_REASONING_END = re.compile(r"</(?:think|thinking|reasoning)>", re.IGNORECASE)
_REASONING_OPEN = re.compile(r"<(?:think|thinking|reasoning)>", re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """``text`` without reasoning blocks: closed ``<think>...</think>`` (also ``thinking``,
    ``reasoning``) blocks are removed; a closing tag without its opening one (chat templates
    that put ``<think>`` in the prompt) drops everything before it; an opening tag never closed
    (reasoning cut off by the token limit) drops everything after it."""
    t = REASONING_BLOCK.sub(" ", text or "")
    ends = list(_REASONING_END.finditer(t))
    if ends:
        t = t[ends[-1].end():]
    m = _REASONING_OPEN.search(t)
    if m:
        t = t[: m.start()]
    return t.strip()


def extract_answer_tag(text: str) -> str | None:
    """Content of the FIRST complete ``<answer>...</answer>`` block outside reasoning blocks;
    None when there is none.

    One rule for the GRPO reward (:mod:`r2i.reward`), evaluation and the difficulty filter. The
    paper's reference code takes the first block in both its reward (``re.search``) and its
    evaluation judge (``str.find``), so the first block it is; reasoning blocks are skipped
    first, so an ``<answer>`` quoted while thinking does not count (docs/evaluation.md).
    """
    m = _ANSWER_TAG.search(strip_reasoning(text or ""))
    return m.group(1).strip() if m else None


_ANSWER_LINE = re.compile(r"answer\s*[:：]", re.IGNORECASE)

#: How :func:`extract_answer` found the answer (``None``: no answer).
ANSWER_SOURCES = ("tag", "unclosed_tag", "answer_line", "last_lines")


def extract_answer(text: str, last_lines: int = 3) -> tuple[str | None, str | None]:
    """The answer of a free-form reply and how it was found: evaluation's rule, which also scores
    models never trained on the tag format (base models, peers), as the reference does.

    In order, on the reply without reasoning blocks (:func:`strip_reasoning`):

    1. ``"tag"``: the first complete ``<answer>...</answer>`` (:func:`extract_answer_tag`);
    2. ``"unclosed_tag"``: an ``<answer>`` never closed (cut off): the text after it;
    3. ``"answer_line"``: the text after the first ``Answer:`` to the end of the reply;
    4. ``"last_lines"``: the last ``last_lines`` non-empty lines.

    Returns ``(None, None)`` for an empty reply. The reward does NOT use this (see
    :mod:`r2i.reward`: no tags, no accuracy).
    """
    tagged = extract_answer_tag(text)
    if tagged is not None:
        return tagged, "tag"
    body = strip_reasoning(text or "")
    m = _OPEN_TAG.search(body)
    if m:
        rest = body[m.end():].strip()
        if rest:
            return rest, "unclosed_tag"
    m = _ANSWER_LINE.search(body)
    if m:
        rest = body[m.end():].strip()
        if rest:
            return rest, "answer_line"
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    if not lines:
        return None, None
    return "\n".join(lines[-last_lines:]), "last_lines"


_LETTER = re.compile(r"^\s*[\(\[]?\s*(?:option\s+|answer\s*[:：]?\s*)?([A-Za-z])\s*(?:[\)\].:：,]|$|\s)", re.IGNORECASE)


def first_option_letter(answer: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The option letter an answer starts with (``B``, ``(B)``, ``B. red``, ``Option B``), or None."""
    if not answer:
        return None
    m = _LETTER.match(answer)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    return None


_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, spell numbers as digits: for string matching."""
    t = (text or "").strip().lower()
    t = re.sub(r"\\text\{([^}]*)\}", r"\1", t)
    t = re.sub(r"[\"'`.,;:!?()\[\]{}]", " ", t)
    words = [(_NUMBER_WORDS.get(w, w)) for w in t.split() if w not in _ARTICLES]
    return " ".join(words)
