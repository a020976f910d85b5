"""Answer checking (r2i.judge): the rule table, the math guard, and the LLM judge against a real
simulated server process (``r2i-sim-server``, a test double; ``sim-judge`` needs a toy world)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from r2i.client import EndpointConfig, free_port
from r2i.judge import (
    DEFAULT_JUDGE_MAX_TOKENS,
    DEFAULT_JUDGE_PROMPT,
    LLMJudge,
    MathWorker,
    answer_letter,
    judge_question,
    judge_reference,
    math_equivalent,
    mcq_letter,
    parse_judge_reply,
    rule_verdict,
)
from r2i.toy.world import generate_world, size_params

BIN = Path(sys.executable).parent

# (answer, ground truth, expected verdict, expected source). None = undecided (LLM judge).
RULE_CASES: list[tuple[str, str, bool | None, str]] = [
    # MCQ letters in many formats (ground truth "B")
    ("B", "B", True, "exact"),
    ("(B)", "B", True, "exact"),
    ("B.", "B", True, "exact"),
    ("b", "B", True, "exact"),
    ("[B]", "B", True, "exact"),
    ("b) red", "B", True, "mcq_letter"),
    ("Option B", "B", True, "mcq_letter"),
    ("option b", "B", True, "mcq_letter"),
    ("The answer is B", "B", True, "mcq_letter"),  # lead-in accepted (documented)
    ("The correct answer is (B).", "B", True, "mcq_letter"),
    ("Answer: B", "B", True, "mcq_letter"),
    ("B. red", "B", True, "mcq_letter"),
    ("B: red", "B", True, "mcq_letter"),
    ("**B**", "B", True, "mcq_letter"),
    ("\\boxed{B}", "B", True, "mcq_letter"),
    ("B red", "B", True, "mcq_letter"),
    ("B and C", "B", True, "mcq_letter"),  # the FIRST option letter counts
    ("C", "B", False, "mcq_letter"),
    ("(C) blue", "B", False, "mcq_letter"),
    ("The answer is D", "B", False, "mcq_letter"),
    ("c. blue", "B", False, "mcq_letter"),
    # option text instead of a letter, and words that start like letters: the judge decides
    ("red", "B", None, "undecided"),
    ("Blue", "B", None, "undecided"),
    ("I think it is B", "B", None, "undecided"),
    ("A red car", "A", None, "undecided"),
    ("the", "A", None, "undecided"),  # normalizes to "" like "A": must not be an exact match
    ("a", "A", True, "exact"),
    ("(A)", "A", True, "exact"),
    ("A.", "A", True, "exact"),
    ("A) a red car", "A", True, "mcq_letter"),
    # other spellings of the MCQ ground truth
    ("B", "(B)", True, "exact"),
    ("Option B", "B.", True, "mcq_letter"),
    ("C", "(B)", False, "mcq_letter"),
    # numbers in words vs digits
    ("three", "3", True, "exact"),
    ("3", "three", True, "exact"),
    ("Three.", "3", True, "exact"),
    ("twelve", "12", True, "exact"),
    ("3.0", "3", True, "math"),
    ("1,000", "1000", True, "math"),
    ("4", "3", None, "undecided"),  # not shown equal: the judge (which will say No)
    ("3 apples", "3", None, "undecided"),
    # units: a unit matches the bare number; different units never match by rule (documented)
    ("5 cm", "5", True, "math"),
    ("5", "5 cm", True, "math"),
    ("5 centimeters", "5 cm", True, "math"),
    ("5 inches", "5 cm", None, "undecided"),
    ("10 days", "10 hours", None, "undecided"),
    ("second", "minute", None, "undecided"),  # mathruler alone would call these equal
    # fractions / LaTeX
    ("\\frac{1}{2}", "0.5", True, "math"),
    ("0.5", "\\frac{1}{2}", True, "math"),
    ("1/2", "0.5", True, "math"),
    ("\\dfrac{3}{4}", "0.75", True, "math"),
    ("2\\sqrt{2}", "\\sqrt{8}", True, "math"),
    ("\\pi", "pi", True, "math"),
    ("50%", "50", True, "math"),
    ("0.33", "\\frac{1}{3}", None, "undecided"),
    ("(1, 2)", "(1,2)", True, "exact"),
    # whitespace / case / punctuation / articles
    ("  Red  ", "red", True, "exact"),
    ("RED.", "red", True, "exact"),
    ("red\n", "Red", True, "exact"),
    ("dark   red", "Dark red", True, "exact"),
    ("a red", "red", True, "exact"),
    ("crimson", "red", None, "undecided"),
    ("X", "x", True, "exact"),  # lower-case truth is not an MCQ letter
    # empty and long answers
    ("", "B", False, "empty"),
    ("   \n ", "red", False, "empty"),
    ("x" * 299, "red", None, "undecided"),
    ("x" * 300, "red", False, "too_long"),
    ("B" + " because" * 60, "B", False, "too_long"),  # length is checked before the letter
    ("red " * 80, "red", False, "too_long"),
    # inputs sympy could choke on: skipped, never hang
    ("9**9**9**9", "1", None, "undecided"),
    ("10^{10^{10}}", "5", None, "undecided"),
    ("100000!", "5", None, "undecided"),
    ("7" * 60, "7", None, "undecided"),
    # no ground truth
    ("red", "", False, "no_ground_truth"),
]


def test_rule_table_is_large_enough():
    assert len(RULE_CASES) >= 50


@pytest.mark.parametrize(("answer", "truth", "value", "source"), RULE_CASES,
                         ids=[f"{i}:{a[:20]!r}-vs-{t!r}" for i, (a, t, _, _) in enumerate(RULE_CASES)])
def test_rule_verdict(answer: str, truth: str, value: bool | None, source: str):
    assert rule_verdict(answer, truth) == (value, source)


def test_length_rule_can_be_disabled_for_evaluation():
    assert rule_verdict("x" * 400, "red") == (False, "too_long")
    assert rule_verdict("red " * 80, "red", max_chars=None) == (None, "undecided")


@pytest.mark.parametrize(("answer", "letter"), [
    ("B", "B"), ("(b)", "B"), ("B)", "B"), ("b.", "B"), ("Choice: C", "C"),
    ("So, the answer is (C).", "C"), ("The final answer is: D", "D"), ("A", "A"), ("I", "I"),
    ("Option (C)", "C"), ("Choices: B", None), ("Answering B", None),
    ("a cat", None), ("It is B", None), ("Blue", None), ("B.5", None), ("(B", None),
    ("", None), ("   ", None),
])
def test_answer_letter(answer: str, letter: str | None):
    assert answer_letter(answer) == letter


@pytest.mark.parametrize(("truth", "letter"), [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), (" [D] ", "D"), ("b", None), ("BB", None),
    ("B. red", None), ("", None),
])
def test_mcq_letter(truth: str, letter: str | None):
    assert mcq_letter(truth) == letter


@pytest.mark.parametrize(("reply", "value"), [
    ("Yes", True), ("No", False), ("yes.", True), ("**No**", False), ("NO", False),
    ("Yes, because both mean red.", True), ("<think>no idea... maybe no</think>\nYes", True),
    ("The answers match: yes", True), ("Maybe", None), ("Nope", None), ("", None),
    ("I cannot say yes or no", None),
    # reasoning blocks are stripped before the verdict is read, whatever they are called, and
    # also when the chat template opened <think> in the prompt (only the closing tag is seen)
    ("<thinking>red vs crimson: yes? no...</thinking>\nNo", False),
    ("Okay, the reference says red, not blue, so no match... yes, I'm sure.\n</think>\n\nNo", False),
    ("<think>the answers differ, so the verdict is no, wait, yes", None),  # cut off: no verdict
    ("\\boxed{Yes}", True),
])
def test_parse_judge_reply(reply: str, value: bool | None):
    assert parse_judge_reply(reply) is value


async def test_thinking_judge_fits_in_the_default_max_tokens(tmp_path: Path):
    """A reasoning judge writes ~1,000 tokens before its verdict: with the old 16-token budget
    every verdict was cut off and counted unparsed; the default (2048, the reference's) fits."""
    from aiohttp import web

    seen: list[int] = []
    reasoning = "Let me compare the two answers carefully. " * 90  # ~4,000 chars, ~1,000 tokens

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(int(body["max_tokens"]))
        text = (reasoning + "</think>\n\nYes")[: 4 * int(body["max_tokens"])]  # 4 chars a token
        return web.json_response({"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "length",
                                               "message": {"role": "assistant", "content": text}}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 10}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        ep = {"name": "judge", "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0}
        async with LLMJudge(ep, "thinker", DEFAULT_JUDGE_PROMPT, None) as judge:
            assert await judge.verdict("Color?", "red", "crimson") == (True, "judge")
        async with LLMJudge(ep, "thinker", DEFAULT_JUDGE_PROMPT, None, max_tokens=16) as judge:
            assert await judge.verdict("Color?", "red", "crimson") == (False, "judge_unparsed")
            assert judge.counts["judge_unparsed"] == 1
    finally:
        await runner.cleanup()
    assert seen == [DEFAULT_JUDGE_MAX_TOKENS, 16] and DEFAULT_JUDGE_MAX_TOKENS == 2048


def test_dangerous_math_is_fast():
    t0 = time.perf_counter()
    for a in ("9**9**9**9", "10^{10^{10}}", "2^2^2^2^2", "99999999!", "\\int_0^1 x dx"):
        assert math_equivalent(a, "3") is False
    assert time.perf_counter() - t0 < 1.0


def test_math_worker_hard_timeout_and_restart():
    hang = ("import sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush()\n"
            "for line in sys.stdin:\n    time.sleep(60)\n")
    w = MathWorker(timeout_s=0.3, script=hang)
    try:
        t0 = time.perf_counter()
        assert w.grade("1", "2") is None
        assert w.grade("1", "2") is None  # a fresh child after the kill
        assert time.perf_counter() - t0 < 5.0
        assert w.counts["timeouts"] == 2 and w.counts["starts"] == 2
        # the guarded path answers False ("not shown equal"), without raising
        assert math_equivalent("2x", "x+x", worker=w) is False
    finally:
        w.close()


def test_math_worker_that_cannot_start_disables_math():
    w = MathWorker(timeout_s=0.5, startup_timeout_s=2.0, script="import sys; sys.exit(3)")
    assert w.grade("x+x", "2x") is None
    assert w.grade("x+x", "2x") is None
    assert w.counts["starts"] == 1  # not retried on every call
    w.close()


def test_judge_inputs():
    q = judge_question("What color is the cup?", ["red", "blue"])
    assert q == "What color is the cup?\nOptions:\nA. red\nB. blue"
    assert judge_question("Q?\nA. red\nB. blue", ["red", "blue"]) == "Q?\nA. red\nB. blue"
    assert judge_reference("B", ["red", "blue"]) == "B. blue"
    assert judge_reference("B", ["red", "blue"], "navy") == "B. navy"
    assert judge_reference("B") == "B"
    assert judge_reference("3 cm", ["x"]) == "3 cm"


# ---------------------------------------------------------------------------------------------
# A real simulated server process (test double)
# ---------------------------------------------------------------------------------------------


def tiny_world(factory: pytest.TempPathFactory) -> Path:
    """The tiny toy world, generated once per session (same place as the other toy tests)."""
    root = factory.getbasetemp() / "toy_world_tiny_seed0"
    if not (root / "index.json").exists():
        generate_world(root, seed=0, **size_params("tiny"))
    return root


class SimServerProcess:
    """``r2i-sim-server`` in its own process group on a free loopback port."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self.proc = subprocess.Popen(
            [str(BIN / "r2i-sim-server"), "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"r2i-sim-server {args} did not start")
            time.sleep(0.05)

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url + "/stats", timeout=5) as r:
            return json.loads(r.read())

    def requests(self) -> int:
        return int(self.stats()["requests"])

    def reset(self) -> None:
        """Zero the counters (max_in_flight included) so a test measures only its own calls."""
        req = urllib.request.Request(self.base_url + "/stats/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServerProcess]:
    srv = SimServerProcess("--world", str(tiny_world(tmp_path_factory)), "--latency", "0.02")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hanging_server() -> Iterator[SimServerProcess]:
    """Every chat request hangs (a judge that times out)."""
    srv = SimServerProcess("--fault-timeout", "1.0")
    yield srv
    srv.stop()


MCQ = "What color is the mug inside the red box?\nOptions:\nA. red\nB. blue\nC. green\nD. white"


def make_judge(server: SimServerProcess, cache_dir: Path | None = None, **cfg: float) -> LLMJudge:
    ep = {"name": "judge", "base_url": server.base_url, "max_concurrency": 8, "timeout_s": 10,
          "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    ep.update(cfg)
    return LLMJudge(ep, "sim-judge", DEFAULT_JUDGE_PROMPT, cache_dir)


async def test_judge_verdicts_from_sim_judge(judge_server: SimServerProcess, tmp_path: Path):
    async with make_judge(judge_server, tmp_path / "cache") as judge:
        assert await judge.verdict(MCQ, "B. blue", "blue") == (True, "judge")
        assert await judge.verdict(MCQ, "B. blue", "blue colored") == (True, "judge")
        assert await judge.verdict(MCQ, "B. blue", "red") == (False, "judge")
        assert await judge.verdict("How many dots?", "3", "three dots") == (True, "judge")


async def test_judge_runs_concurrently(judge_server: SimServerProcess, tmp_path: Path):
    items = [(MCQ, "B. blue", f"blue {'very ' * i}".strip()) for i in range(16)]
    async with make_judge(judge_server, tmp_path / "cache") as judge:
        judge_server.reset()
        out = await judge.verdicts(items)
    assert len(out) == 16 and all(src == "judge" for _, src in out)
    stats = judge_server.stats()
    assert stats["requests"] == 16
    assert stats["max_in_flight"] > 1  # not one after the other


async def test_judge_cache_hit_is_never_resent(judge_server: SimServerProcess, tmp_path: Path):
    cache = tmp_path / "cache"
    before = judge_server.requests()
    async with make_judge(judge_server, cache) as judge:
        first = await judge.verdict(MCQ, "B. blue", "navy blue")
        assert await judge.verdict(MCQ, "B. blue", "navy blue") == first  # in-process memo
        assert judge.counts["memo_hits"] == 1
    assert judge_server.requests() - before == 1
    async with make_judge(judge_server, cache) as fresh:  # a new process would do the same
        assert await fresh.verdict(MCQ, "B. blue", "navy blue") == first
        assert fresh.client.stats.cache_hits == 1
    assert judge_server.requests() - before == 1


async def test_grade_asks_the_judge_only_when_rules_cannot_decide(
        judge_server: SimServerProcess, tmp_path: Path):
    async with make_judge(judge_server, tmp_path / "cache") as judge:
        before = judge_server.requests()
        assert await judge.grade(MCQ, "B", "(B)") == (True, "exact")
        assert await judge.grade(MCQ, "B", "C") == (False, "mcq_letter")
        assert await judge.grade(MCQ, "3", "3.0") == (True, "math")
        assert judge_server.requests() == before
        assert await judge.grade(MCQ, "B", "blue", reference="B. blue") == (True, "judge")
        assert judge_server.requests() == before + 1


async def test_unreachable_judge_falls_back_without_raising(
        hanging_server: SimServerProcess, tmp_path: Path):
    judge = make_judge(hanging_server, tmp_path / "cache", timeout_s=0.3, max_retries=1)
    judge.failure_threshold = 2
    try:
        t0 = time.perf_counter()
        # undecided by the rules -> 0 with source judge_unavailable
        assert await judge.verdict(MCQ, "B. blue", "blue") == (False, "judge_unavailable")
        # the rule verdict is kept when the rules decide
        assert await judge.verdict(MCQ, "B. blue", "(B)", ground_truth="B") == \
            (True, "judge_unavailable")
        assert time.perf_counter() - t0 < 5
        assert judge.client.stats.errors == 2
        # circuit open: the next verdict falls back at once, nothing is sent
        before = hanging_server.requests()
        t1 = time.perf_counter()
        assert await judge.verdict(MCQ, "B. blue", "navy") == (False, "judge_unavailable")
        assert time.perf_counter() - t1 < 0.2
        assert hanging_server.requests() == before
        assert judge.counts["skipped_circuit_open"] == 1
    finally:
        await judge.aclose()


def test_judge_rejects_a_prompt_without_placeholders(tmp_path: Path):
    bad = tmp_path / "judge.txt"
    bad.write_text("Question: $question\nReply Yes or No.\n")
    with pytest.raises(ValueError, match="reference"):
        LLMJudge(EndpointConfig(name="j", base_url="http://127.0.0.1:9"), "m", bad)


def test_default_prompt_is_the_one_the_simulator_recognizes():
    text = DEFAULT_JUDGE_PROMPT.read_text()
    assert "Reference answer: $reference" in text and "$question" in text and "$answer" in text


def test_verdicts_accept_ground_truth_column(hanging_server: SimServerProcess):
    judge = make_judge(hanging_server, None, timeout_s=0.2, max_retries=0)

    async def go() -> list[tuple[bool, str]]:
        try:
            return await judge.verdicts([(MCQ, "B. blue", "C", "B"), (MCQ, "B. blue", "blue")])
        finally:
            await judge.aclose()

    assert asyncio.run(go()) == [(False, "judge_unavailable"), (False, "judge_unavailable")]
