"""Answer checking shared by the GRPO reward (:mod:`r2i.reward`) and by evaluation.

The method (docs: spec "Training (GRPO)" and "Evaluation") checks an extracted ``<answer>`` in a
fixed order, and only what the cheap rules cannot decide goes to an LLM judge:

1. empty answer -> 0 (``"empty"``);
2. an answer of 300+ characters -> 0 (``"too_long"``): long answers are hedges or lists of
   candidates, and rewarding them would teach the student to enumerate options;
3. normalized string match -> 1 (``"exact"``; case, punctuation, articles and the number words
   zero..twenty are normalized, so ``"three"`` == ``"3"`` and ``"Red."`` == ``"red"``);
4. MCQ ground truth (one upper-case option letter, also written ``"(B)"``, ``"B."``, ``"[B]"``):
   the first option letter of the answer decides, equal -> 1, different -> 0 (``"mcq_letter"``);
5. a math-style grader (``mathruler.grader.grade_answer``) says equal -> 1 (``"math"``);
6. otherwise undecided (``None``): ask the LLM judge (:class:`LLMJudge`).

Decisions taken where the method is silent (all covered by tests/test_judge.py):

* **Option letters** are read only at the *start* of the answer, after an optional lead-in
  (``"The answer is"``, ``"The correct option is"``, ``"Answer:"``, ``"Option"``, ``"Choice"``)
  and ``**bold**``/``\\boxed{}`` wrappers: ``"B"``, ``"(B)"``, ``"B."``, ``"b) red"``,
  ``"Option B"`` and ``"The answer is B"`` all read as B. The lead-in is accepted because models
  often repeat it inside the tags and the letter stays unambiguous. A lower-case letter counts
  only when followed by ``)``/``]``/``.``/``:`` or the end (``"a cat"`` is not option A), and an
  upper-case ``A``/``I`` followed by a word is English (``"A red car"``, ``"I think B"``), not a
  letter. An answer with no readable letter (e.g. the option's text) is left to the judge, whose
  prompt shows the options.
* **Units**: a number with a unit matches the bare number (``"5 cm"`` == ``"5"``, as mathruler
  does: the question fixes the unit); two *different* units are never matched by the math rule
  (``"5 inches"`` vs ``"5 cm"`` goes to the judge), and words that are only units
  (``"second"`` vs ``"minute"``) are never compared by the math rule (mathruler strips unit words
  and would call both empty strings equal).
* **Math guard**: mathruler runs only when an answer looks numeric/LaTeX (a digit, ``\\``, ``π``
  or ``√``); inputs sympy may choke on (``**``, factorials, huge exponents, long digit runs,
  200+ characters) are skipped, and sympy itself runs in a helper process with a hard time limit
  (:class:`MathWorker`): a hung or crashed grader means "not shown equal", never a hang.

:class:`LLMJudge` asks an OpenAI-compatible model through :mod:`r2i.client` (retries, bounded
concurrency, persistent cache: a repeated question is never re-sent) at temperature 0 with a seed
derived from the prompt, allowing ``max_tokens`` (default 2048, as the reference judge) so that a
thinking judge reaches its verdict; reasoning blocks are stripped before the verdict is read. FALLBACK: when the judge stays unreachable after the client's retries
(or is skipped while its circuit breaker is open after repeated failures), the verdict is the
rule verdict if the rules decide, else ``False`` (score 0.0), with source
``"judge_unavailable"``; it is logged and counted, never raised, so a training step never crashes
because the judge is down. A reply that is neither Yes nor No gives ``(False, "judge_unparsed")``.

:class:`JudgeThread` runs judges on one private, long-lived event loop thread per process so that
synchronous callers (verl's per-sample reward managers) reuse one HTTP session and one cache.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from r2i.client import CallCache, ClientStats, EndpointConfig, ModelClient, seed_for
from r2i.packagedata import prompt_path
from r2i.parsing import _NUMBER_WORDS, normalize_answer, strip_reasoning
from r2i.prompts import PromptTemplate, load_template

__all__ = [
    "DEFAULT_JUDGE_MAX_TOKENS",
    "DEFAULT_JUDGE_PROMPT",
    "MAX_ANSWER_CHARS",
    "JudgeSettings",
    "JudgeThread",
    "LLMJudge",
    "MathWorker",
    "Verdict",
    "answer_letter",
    "judge_question",
    "judge_reference",
    "math_equivalent",
    "mcq_letter",
    "parse_judge_reply",
    "reply_verdict",
    "rule_verdict",
    "shared_judge_thread",
]

log = logging.getLogger("r2i.judge")
T = TypeVar("T")

#: ``(correct, source)``; ``correct`` is None when the rules cannot decide.
Verdict = tuple[bool | None, str]

#: Answers this long (in characters) or longer score 0 (the method's length rule).
MAX_ANSWER_CHARS = 300
#: Completion budget of one judge call. A thinking judge (Qwen3 with reasoning) writes hundreds
#: of tokens before its verdict; the paper's reference judge allows 2048.
DEFAULT_JUDGE_MAX_TOKENS = 2048
#: The shipped judge prompt (package data, ``$question``, ``$reference``, ``$answer``).
DEFAULT_JUDGE_PROMPT = prompt_path("judge")

# ---------------------------------------------------------------------------------------------
# Option letters
# ---------------------------------------------------------------------------------------------

_MCQ_TRUTH = re.compile(r"^\s*[\(\[]?\s*([A-Z])\s*[\)\]]?\s*[.:]?\s*$")
_LEAD_IN = re.compile(
    r"^(?:so\s*,?\s*)?(?:the\s+)?(?:correct\s+|final\s+|best\s+|right\s+)?"
    r"(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:：]?\s*",
    re.IGNORECASE,
)
_WRAPPERS = re.compile(r"^\\(?:boxed|text|textbf|mathrm)\s*\{(.*)\}$", re.DOTALL)
_LETTER = re.compile(r"^[\(\[]?\s*([A-Za-z])(?P<rest>.*)$", re.DOTALL)
_STRIP_LEAD = " \t\r\n*_`\"'"


def mcq_letter(ground_truth: str) -> str | None:
    """The option letter when ``ground_truth`` is one (``"B"``, ``"(B)"``, ``"B."``), else None.

    Only upper-case letters count, so a lower-case math variable (``"x"``) is not an MCQ.
    """
    m = _MCQ_TRUTH.match(ground_truth or "")
    return m.group(1) if m else None


def _unwrap(text: str) -> str:
    t = text.strip().strip(_STRIP_LEAD)
    for _ in range(3):
        m = _WRAPPERS.match(t)
        if not m:
            break
        t = m.group(1).strip().strip(_STRIP_LEAD)
    return t


def answer_letter(answer: str) -> str | None:
    """The option letter an answer starts with (see the module docstring for the exact rules)."""
    t = _unwrap(answer or "")
    t = _LEAD_IN.sub("", t, count=1)
    t = _unwrap(t)
    m = _LETTER.match(t)
    if not m:
        return None
    letter, rest = m.group(1), m.group("rest")
    if t[0] in "([":  # "(B)", "[b] red": the bracket must close right after the letter
        return letter.upper() if re.match(r"\s*[\)\]]", rest) else None
    if rest == "" or re.match(r"\s*[\)\]]", rest) or re.match(r"[.:：,;*](?![A-Za-z0-9])", rest):
        return letter.upper()
    if rest[0].isspace() and letter.isupper() and letter not in "AI":
        return letter  # "B red"; but "A red car" and "I think B" are English
    return None


# ---------------------------------------------------------------------------------------------
# Math-style equivalence (mathruler, guarded)
# ---------------------------------------------------------------------------------------------

_UNIT = re.compile(
    r"(?<![a-z])(degree|centimeter|cm|meter|mile|second|minute|hour|day|week|month|year|foot|feet|"
    r"inch|yard)(?:e?s)?(?![a-z])"
)
_UNIT_CANON = {"centimeter": "cm", "feet": "foot"}
_MATHY = re.compile(r"[0-9\\π√]")
_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$|^[+-]?\.\d+$")
_NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b",
                             re.IGNORECASE)
_DANGEROUS = (
    re.compile(r"\*\*"),  # python power: mathruler's guards only look at '^'
    re.compile(r"!"),  # factorials of big numbers
    re.compile(r"\d{40,}"),  # long digit runs (huge integers)
    re.compile(r"\^\s*[\{\(]"),  # nested exponents
    re.compile(r"\^\s*-?\d{3,}"),  # huge exponents
    re.compile(r"\^\s*\d+\s*\^"),  # exponent towers
    re.compile(r"\\(?:int|sum|prod|lim|infty)"),
)
MAX_MATH_CHARS = 200


def _units(text: str) -> set[str]:
    return {_UNIT_CANON.get(u, u) for u in _UNIT.findall(text.lower())}


def _digits_for_words(text: str) -> str:
    return _NUMBER_WORD_RE.sub(lambda m: _NUMBER_WORDS[m.group(1).lower()], text)


def _math_skip_reason(answer: str, truth: str) -> str | None:
    """Why the math grader must not see this pair (None: safe and meaningful to try)."""
    if len(answer) > MAX_MATH_CHARS or len(truth) > MAX_MATH_CHARS:
        return "long"
    if not (_MATHY.search(answer) or _MATHY.search(truth)):
        return "not_math"
    for text in (answer, truth):
        if not re.sub(r"[\W_]+", "", _UNIT.sub("", text.lower())):
            return "unit_only"
        if any(p.search(text) for p in _DANGEROUS):
            return "dangerous"
    ua, ut = _units(answer), _units(truth)
    if ua and ut and ua != ut:
        return "different_units"
    return None


def _as_number(text: str) -> float | None:
    t = text.strip()
    if not _NUMBER.match(t):
        return None
    try:
        return float(t.replace(",", ""))
    except ValueError:
        return None


_WORKER_SCRIPT = r"""
import json, sys
try:
    import resource
    _lim = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if _lim > 0:
        resource.setrlimit(resource.RLIMIT_AS, (_lim, _lim))
except Exception:
    pass
from mathruler.grader import grade_answer
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    try:
        a, b = json.loads(line)
        out = [True, bool(grade_answer(a, b))]
    except BaseException as exc:
        out = [False, type(exc).__name__]
    sys.stdout.write(json.dumps(out) + "\n"); sys.stdout.flush()
"""


class MathWorker:
    """``mathruler.grader.grade_answer`` in a helper process with a hard time limit per call.

    sympy can run for minutes (or exhaust memory) on odd input, and a Python thread cannot be
    stopped, so the grader lives in a child process that is killed when a call overruns
    ``timeout_s`` and restarted on the next call. The child also gets an address-space limit
    (``memory_limit_bytes``). Calls are serialized by a lock (one child per worker); if the
    child cannot be started at all, every call answers None and the failure is logged once.
    ``script`` replaces the child's program (tests use it to simulate a hanging grader).
    """

    def __init__(self, timeout_s: float = 2.0, *, startup_timeout_s: float = 60.0,
                 memory_limit_bytes: int = 2 << 30, script: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self.script = script or _WORKER_SCRIPT
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._broken = False

    def _start(self) -> subprocess.Popen[str] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._broken:
            return None
        env = dict(os.environ)
        # The child must import the same mathruler as this process, however it was found.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", self.script, str(self.memory_limit_bytes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, bufsize=1, env=env, close_fds=True,
            )
        except OSError as exc:
            self._broken = True
            log.warning("math grader process cannot start (%s); math rule disabled", exc)
            return None
        self.counts["starts"] += 1
        line = self._readline(proc, self.startup_timeout_s)
        if line != "ready":
            self._kill(proc)
            self._broken = True
            log.warning("math grader process did not start (got %r); math rule disabled", line)
            return None
        self._proc = proc
        return proc

    @staticmethod
    def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = proc.stdout.readline()
        return line.strip() if line else None

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def grade(self, answer: str, truth: str) -> bool | None:
        """True/False from mathruler, or None on timeout, crash or error (logged)."""
        with self._lock:
            proc = self._start()
            if proc is None:
                return None
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps([answer, truth]) + "\n")
                proc.stdin.flush()
            except OSError:
                self._kill(proc)
                self._proc = None
                self.counts["crashes"] += 1
                return None
            line = self._readline(proc, self.timeout_s)
            if line is None:
                self._kill(proc)
                self._proc = None
                self.counts["timeouts"] += 1
                log.warning("math grader exceeded %.1f s on %r vs %r; killed (undecided)",
                            self.timeout_s, answer[:60], truth[:60])
                return None
            try:
                ok, value = json.loads(line)
            except ValueError:
                self.counts["errors"] += 1
                return None
            if not ok:
                self.counts["errors"] += 1
                log.debug("math grader raised %s on %r vs %r", value, answer[:60], truth[:60])
                return None
            self.counts["calls"] += 1
            return bool(value)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._kill(self._proc)
                self._proc = None


_MATH_WORKER: MathWorker | None = None
_MATH_WORKER_LOCK = threading.Lock()


def _math_worker() -> MathWorker:
    global _MATH_WORKER
    with _MATH_WORKER_LOCK:
        if _MATH_WORKER is None:
            _MATH_WORKER = MathWorker()
            atexit.register(_MATH_WORKER.close)
        return _MATH_WORKER


def math_equivalent(answer: str, truth: str, *, worker: MathWorker | None = None) -> bool:
    """True when a math-style grader shows ``answer`` equal to ``truth``; never raises or hangs.

    Cheap checks first (mathruler's MATH-style string normalization, plain number comparison),
    then ``grade_answer`` in the guarded helper process. False also means "could not tell".
    """
    try:
        a, t = _digits_for_words(answer.strip()), _digits_for_words(truth.strip())
        if _math_skip_reason(a, t) is not None:
            return False
        from mathruler.math_normalize import normalize_answer as mathd_normalize

        na, nt = mathd_normalize(a), mathd_normalize(t)
        if na and na == nt:
            return True
        fa, ft = _as_number(a), _as_number(t)
        if fa is not None and ft is not None:
            return abs(fa - ft) <= 1e-9 * max(1.0, abs(ft))
        return bool((worker or _math_worker()).grade(a, t))
    except Exception as exc:  # the reward must never crash on a grader bug
        log.debug("math check failed on %r vs %r: %s", answer[:60], truth[:60], exc)
        return False


# ---------------------------------------------------------------------------------------------
# The rule verdict
# ---------------------------------------------------------------------------------------------

_PLAIN_STRIP = " \t\r\n.,;:!?\"'`()[]{}*"


def _plain(text: str) -> str:
    return " ".join(text.casefold().split()).strip(_PLAIN_STRIP)


def _exact(answer: str, truth: str) -> bool:
    nt = normalize_answer(truth)
    if nt:
        return normalize_answer(answer) == nt
    # The normalizer drops articles, so a truth like "A" normalizes to "" (and so would "the").
    pt = _plain(truth)
    return bool(pt) and _plain(answer) == pt


def rule_verdict(answer: str, ground_truth: str, *, max_chars: int | None = MAX_ANSWER_CHARS,
                 math_worker: MathWorker | None = None) -> Verdict:
    """The method's rule checks on an extracted answer (see the module docstring).

    Returns ``(True|False, source)`` when a rule decides and ``(None, "undecided")`` when only
    the LLM judge can. ``max_chars=None`` disables the length rule (evaluation may want that).
    """
    ans = (answer or "").strip()
    truth = str(ground_truth if ground_truth is not None else "").strip()
    if not ans:
        return False, "empty"
    if max_chars is not None and len(ans) >= max_chars:
        return False, "too_long"
    if not truth:
        return False, "no_ground_truth"
    if _exact(ans, truth):
        return True, "exact"
    letter = mcq_letter(truth)
    if letter is not None:
        picked = answer_letter(ans)
        if picked is not None:
            return picked == letter, "mcq_letter"
    # A letter truth can equal nothing but itself (the exact rule): no math for MCQs.
    elif math_equivalent(ans, truth, worker=math_worker):
        return True, "math"
    return None, "undecided"


# ---------------------------------------------------------------------------------------------
# Judge inputs and replies
# ---------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def judge_question(question: str, options: Sequence[str] | None = None) -> str:
    """The question shown to the judge, with ``A. ...`` option lines when there are options.

    Options matter: the judge prompt asks it to compare what option letters stand for.
    """
    q = (question or "").strip()
    opts = [str(o).strip() for o in (options or [])]
    if not opts or re.search(r"^\s*\(?A[.)]\s", q, re.MULTILINE):
        return q
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts[: len(LETTERS)]))
    return f"{q}\nOptions:\n{lines}" if q else f"Options:\n{lines}"


def judge_reference(ground_truth: str, options: Sequence[str] | None = None,
                    answer_text: str | None = None) -> str:
    """The reference answer shown to the judge: ``"B. red"`` for an MCQ letter when its text is
    known (so an answer giving the option text can be judged), else the ground truth as is."""
    truth = str(ground_truth or "").strip()
    letter = mcq_letter(truth)
    if letter is None:
        return truth
    text = (answer_text or "").strip()
    opts = list(options or [])
    if not text and LETTERS.index(letter) < len(opts):
        text = str(opts[LETTERS.index(letter)]).strip()
    return f"{letter}. {text}" if text else letter


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_judge_reply(text: str) -> bool | None:
    """True for Yes, False for No, None when the reply says neither (or both, first word aside).

    Reasoning blocks are removed first (:func:`r2i.parsing.strip_reasoning`: ``<think>``,
    ``<thinking>``, ``<reasoning>``; a reply whose reasoning was cut off by ``max_tokens`` has no
    verdict). Then the first word decides ("Yes.", "**No**", "yes, because..."); otherwise a
    reply mentioning exactly one of the two words decides (``\\boxed{Yes}``, "My verdict: no").
    """
    t = strip_reasoning(text or "")
    first = re.match(r"^[\W_]*([A-Za-z]+)", t)
    if first and first.group(1).lower() in ("yes", "no"):
        return first.group(1).lower() == "yes"
    found = {w.lower() for w in _YES_NO.findall(t)}
    if len(found) == 1:
        return found.pop() == "yes"
    return None


def reply_verdict(text: str) -> tuple[bool, str]:
    """``(correct, source)`` of one judge reply: ``(True|False, "judge")``, or
    ``(False, "judge_unparsed")`` when it says neither Yes nor No (counted, never raised).

    What any caller that talks to the judge itself should use (e.g. the synthesis difficulty
    filter), with ``max_tokens=DEFAULT_JUDGE_MAX_TOKENS`` so a thinking judge is not cut off.
    """
    value = parse_judge_reply(text)
    return (False, "judge_unparsed") if value is None else (value, "judge")


# ---------------------------------------------------------------------------------------------
# LLM judge
# ---------------------------------------------------------------------------------------------


class LLMJudge:
    """Asks an OpenAI-compatible model whether an answer means the same as the reference.

    ``endpoint``: an :class:`EndpointConfig` or a mapping of its fields (``name`` optional, e.g.
    ``config["endpoints"]["sim"]``); ``base_url`` overrides the endpoint's (what
    :func:`r2i.client.open_endpoint` yields for launched servers). ``prompt_path``: a
    ``string.Template`` file with ``$question``, ``$reference`` and ``$answer``. ``cache_dir``:
    persistent call cache (None: in-process memo only). Calls run at temperature 0 with a seed
    derived from the prompt, so a call's cache key is stable across runs and processes.

    ``failure_threshold`` consecutive failed calls open a circuit breaker for ``cooldown_s``:
    meanwhile verdicts fall back at once instead of each waiting out the retries of a dead
    server (a training step with thousands of samples would otherwise stall for hours).

    Use from one event loop (the client's session and semaphores are bound to it); for
    synchronous callers see :class:`JudgeThread`.
    """

    def __init__(
        self,
        endpoint: EndpointConfig | Mapping[str, Any],
        model: str,
        prompt_path: str | os.PathLike[str] = DEFAULT_JUDGE_PROMPT,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        max_tokens: int | None = DEFAULT_JUDGE_MAX_TOKENS,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        memo_size: int = 100_000,
        stats: ClientStats | None = None,
    ) -> None:
        if isinstance(endpoint, EndpointConfig):
            self.cfg = endpoint
        else:
            data = dict(endpoint)
            self.cfg = EndpointConfig.from_dict(str(data.pop("name", "judge")), data)
        if not model:
            raise ValueError("LLMJudge needs a model name")
        self.model = model
        self.template: PromptTemplate = load_template(prompt_path, "judge")
        missing = [k for k in ("question", "reference", "answer") if f"${k}" not in self.template.text]
        if missing:
            raise ValueError(f"judge prompt {prompt_path} lacks placeholders {missing}")
        self.max_tokens = max_tokens
        self.failure_threshold = max(1, failure_threshold)
        self.cooldown_s = cooldown_s
        self.memo_size = memo_size
        cache = CallCache(cache_dir) if cache_dir is not None else None
        self.client = ModelClient(self.cfg, base_url=base_url, cache=cache, stats=stats)
        self.counts: Counter[str] = Counter()
        self._memo: dict[tuple[str, str, str], tuple[bool, str]] = {}
        self._failures = 0
        self._open_until = 0.0

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.model!r}, client={self.client!r})"

    async def __aenter__(self) -> LLMJudge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()

    def prompt(self, question: str, reference: str, answer: str) -> str:
        return self.template.render(question=question, reference=reference, answer=answer)

    def stats_dict(self) -> dict[str, Any]:
        """Verdict counters plus the client's counters (requests, cache hits, errors)."""
        return {"verdicts": dict(self.counts), "client": self.client.stats.to_dict()}

    def _fallback(self, reference: str, answer: str, ground_truth: str | None) -> tuple[bool, str]:
        self.counts["judge_unavailable"] += 1
        value, _ = rule_verdict(answer, ground_truth if ground_truth is not None else reference)
        return bool(value), "judge_unavailable"

    def _note_failure(self, why: str) -> None:
        self._failures += 1
        if self._failures >= self.failure_threshold:
            already_open = time.monotonic() < self._open_until
            self._open_until = time.monotonic() + self.cooldown_s
            if not already_open:
                log.warning("judge %s (%s): %d consecutive failures (last: %s); falling back "
                            "to the rules for %.0f s", self.model, self.client.base_url,
                            self._failures, why, self.cooldown_s)

    async def verdict(self, question: str, reference: str, answer: str, *,
                      ground_truth: str | None = None) -> tuple[bool, str]:
        """``(correct, "judge")`` from the model; the documented fallback when it is unavailable.

        ``ground_truth`` (the raw ground truth, e.g. ``"B"`` when ``reference`` is ``"B. red"``)
        feeds the fallback's rule verdict; it defaults to ``reference``.
        """
        key = (question, reference, answer)
        hit = self._memo.get(key)
        if hit is not None:
            self.counts["memo_hits"] += 1
            return hit
        if time.monotonic() < self._open_until:
            self.counts["skipped_circuit_open"] += 1
            return self._fallback(reference, answer, ground_truth)
        prompt = self.prompt(question, reference, answer)
        try:
            res = await self.client.chat(
                self.model, [{"role": "user", "content": prompt}], n=1,
                seed=seed_for("judge", self.model, prompt), temperature=0.0,
                max_tokens=self.max_tokens,
            )
        except Exception as exc:  # ModelCallError, or anything else: never crash the caller
            log.warning("judge %s unavailable for one verdict, using fallback: %s",
                        self.model, exc)
            self._note_failure(type(exc).__name__)
            return self._fallback(reference, answer, ground_truth)
        self._failures = 0
        out = reply_verdict(res.texts[0])
        if out[1] == "judge_unparsed":
            log.info("judge %s reply is neither Yes nor No (max_tokens %s): %r", self.model,
                     self.max_tokens, res.texts[0][-160:])
        self.counts[out[1]] += 1
        if len(self._memo) >= self.memo_size:
            self._memo.pop(next(iter(self._memo)))
        self._memo[key] = out
        return out

    async def verdicts(self, items: Iterable[Sequence[str]]) -> list[tuple[bool, str]]:
        """:meth:`verdict` for many ``(question, reference, answer[, ground_truth])`` at once.

        All calls are in flight together; the client bounds how many reach the server.
        """
        calls = [self.verdict(it[0], it[1], it[2], ground_truth=it[3] if len(it) > 3 else None)
                 for it in items]
        return list(await asyncio.gather(*calls))

    async def grade(self, question: str, ground_truth: str, answer: str, *,
                    reference: str | None = None,
                    max_chars: int | None = MAX_ANSWER_CHARS) -> tuple[bool, str]:
        """Rules first, the judge only for undecided answers (what evaluation needs)."""
        value, source = rule_verdict(answer, ground_truth, max_chars=max_chars)
        if value is not None:
            return value, source
        ref = reference if reference is not None else ground_truth
        return await self.verdict(question, ref, answer, ground_truth=ground_truth)


# ---------------------------------------------------------------------------------------------
# Synchronous access: one private event loop thread per process
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeSettings:
    """Everything that identifies one judge (hashable: the key of :meth:`JudgeThread.judge`)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    max_concurrency: int = 64
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_max_s: float = 10.0
    cache_dir: str | None = None
    prompt_path: str = str(DEFAULT_JUDGE_PROMPT)
    max_tokens: int | None = DEFAULT_JUDGE_MAX_TOKENS
    failure_threshold: int = 5
    cooldown_s: float = 30.0

    def endpoint(self) -> EndpointConfig:
        return EndpointConfig(
            name="judge", base_url=self.base_url, api_key_env=self.api_key_env,
            max_concurrency=self.max_concurrency, timeout_s=self.timeout_s,
            max_retries=self.max_retries, backoff_max_s=self.backoff_max_s,
        )

    def deadline_s(self) -> float:
        """Upper bound on one verdict (all attempts and backoffs), plus slack."""
        return (self.max_retries + 1) * self.timeout_s + self.max_retries * self.backoff_max_s + 30

    def build(self) -> LLMJudge:
        return LLMJudge(self.endpoint(), self.model, self.prompt_path, self.cache_dir,
                        max_tokens=self.max_tokens, failure_threshold=self.failure_threshold,
                        cooldown_s=self.cooldown_s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class JudgeThread:
    """A long-lived event loop on a daemon thread that owns the process's judges.

    verl calls a synchronous reward function per sample, possibly from several executor threads
    at once; each call submits its coroutine here and blocks on the result. The judges (one per
    :class:`JudgeSettings`, so one HTTP session and cache each) live as long as the process, so
    no session is created per sample and concurrent samples share the client's concurrency
    limit. ``submit`` is thread-safe and also usable from another event loop (wrap the future
    with :func:`asyncio.wrap_future`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._judges: dict[JudgeSettings, LLMJudge] = {}

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="r2i-judge-loop", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
                self._judges = {}
            return self._loop

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def judge(self, settings: JudgeSettings) -> LLMJudge:
        """The process's judge for ``settings`` (created on first use)."""
        self._ensure_loop()
        with self._lock:
            judge = self._judges.get(settings)
            if judge is None:
                judge = self._judges[settings] = settings.build()
            return judge

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        loop = self._ensure_loop()

        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), loop)

    def run(self, coro: Awaitable[T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the private loop and wait (``concurrent.futures.TimeoutError``)."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("JudgeThread.run called from its own loop (would deadlock)")
        fut = self.submit(coro)
        try:
            return fut.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every judge's client and stop the loop (idempotent)."""
        with self._lock:
            loop, thread, judges = self._loop, self._thread, list(self._judges.values())
            self._loop, self._thread, self._judges = None, None, {}
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            for j in judges:
                with contextlib.suppress(Exception):
                    await j.aclose()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=timeout_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=timeout_s)
        if not thread.is_alive():
            loop.close()


_SHARED: JudgeThread | None = None
_SHARED_PID = -1
_SHARED_LOCK = threading.Lock()


def shared_judge_thread() -> JudgeThread:
    """The process-wide :class:`JudgeThread` (a forked child gets its own, fresh one)."""
    global _SHARED, _SHARED_PID
    with _SHARED_LOCK:
        if _SHARED is None or os.getpid() != _SHARED_PID:
            _SHARED = JudgeThread()
            _SHARED_PID = os.getpid()
            atexit.register(_SHARED.close)
        return _SHARED
