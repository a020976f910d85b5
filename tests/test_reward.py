"""The GRPO reward (r2i.reward) as verl calls it, with the judge on a real simulated server
process (``r2i-sim-server``, a test double)."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from r2i import reward
from r2i.client import free_port
from r2i.judge import shared_judge_thread
from r2i.reward import compute_score, compute_score_async, compute_score_batch, format_score

from .test_judge import SimServerProcess, tiny_world

REWARD_PY = Path(reward.__file__)
INFO = {"question": "What color is the mug?", "focus_question": "What color is the mug inside "
        "the red box?", "options": np.array(["red", "blue", "green", "white"]), "answer": "B",
        "answer_text": "blue"}


def wrap(answer: str, think: str = "The box shows a mug.") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


# (response, ground truth, acc, format, source, pred) with no judge configured
CASES: list[tuple[str, str, float, float, str, str]] = [
    (wrap("B"), "B", 1.0, 1.0, "exact", "B"),
    (wrap("(B) blue"), "B", 1.0, 1.0, "mcq_letter", "B"),
    (wrap("The answer is B"), "B", 1.0, 1.0, "mcq_letter", "B"),
    (wrap("C"), "B", 0.0, 1.0, "mcq_letter", "C"),
    (wrap("blue"), "B", 0.0, 1.0, "no_judge", "blue"),  # option text: only a judge can say
    ("The answer is B.", "B", 0.0, 0.0, "no_answer_tag", ""),  # the response is NOT used
    ("<answer>B", "B", 0.0, 0.0, "no_answer_tag", ""),  # truncated: no closing tag
    (wrap(""), "B", 0.0, 1.0, "empty", ""),
    (wrap("   "), "B", 0.0, 1.0, "empty", ""),
    (wrap("B " + "because " * 40), "B", 0.0, 1.0, "too_long", "B"),
    # several blocks: the first one counts, in the reward as in evaluation (r2i.parsing)
    ("<answer>C</answer> on second thought <answer>B</answer>", "B", 0.0, 0.0, "mcq_letter", "C"),
    ("<answer>B</answer> <answer>C</answer>", "B", 1.0, 0.0, "exact", "B"),  # the first counts
    ("<ANSWER> b </ANSWER>", "B", 1.0, 1.0, "exact", "B"),
    ("<answer>B</answer></answer>", "B", 1.0, 0.0, "exact", "B"),  # stray tag: format 0
    (wrap("three"), "3", 1.0, 1.0, "exact", "3"),
    (wrap("5 cm"), "5", 1.0, 1.0, "math", "5 cm"),
    (wrap("\\frac{1}{2}"), "0.5", 1.0, 1.0, "math", "\\frac 1 2"),
    (wrap("  Dark Red. "), "dark red", 1.0, 1.0, "exact", "dark red"),
]


@pytest.mark.parametrize(("response", "truth", "acc", "fmt", "source", "pred"), CASES)
def test_compute_score_rules(response: str, truth: str, acc: float, fmt: float, source: str,
                             pred: str):
    out = compute_score("r2i", response, truth, INFO)
    assert out == {"score": acc, "acc": acc, "format": fmt, "source": source, "pred": pred}


def test_format_weight():
    out = compute_score("r2i", "<answer>C</answer>", "B", None, format_weight=0.1)
    assert out["acc"] == 0.0 and out["format"] == 1.0 and out["score"] == pytest.approx(0.1)
    out = compute_score("r2i", "B", "B", None, format_weight=0.1)
    assert out["score"] == 0.0
    assert format_score("<answer>B</answer>") == 1.0 and format_score("B") == 0.0
    with pytest.raises(ValueError):
        compute_score("r2i", "<answer>B</answer>", "B", None, format_weight=2)


def test_config_errors_are_loud():
    with pytest.raises(ValueError, match="judge_modle"):
        compute_score("r2i", wrap("blue"), "B", INFO, judge_base_url="http://x", judge_modle="m")
    with pytest.raises(ValueError, match="judge_model"):
        compute_score("r2i", wrap("blue"), "B", INFO, judge_base_url="http://127.0.0.1:9")


def test_loaded_by_file_path_like_verl():
    """verl loads ``reward.custom_reward_function.path`` with spec_from_file_location under
    another module name and calls the function with ``reward_kwargs`` merged in."""
    spec = importlib.util.spec_from_file_location("custom_module", REWARD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # deliberately not registered in sys.modules
    fn = module.compute_score

    def call_with_kwargs(raw_fn: Any, extra: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return raw_fn(*args, **{**kwargs, **extra})  # verl's _call_with_kwargs

    wrapped = partial(call_with_kwargs, fn, {"format_weight": 0.0})
    result = wrapped(data_source="r2i", solution_str=wrap("B"), ground_truth="B",
                     extra_info=INFO, reward_router_address=None)
    # what verl's naive manager does with a dict result
    assert isinstance(result, dict)
    result.pop("extra_info", {})
    score = result["score"]
    assert isinstance(score, float) and score == 1.0
    numeric = {k: v for k, v in result.items() if not isinstance(v, str)}
    assert set(numeric) == {"score", "acc", "format"}
    assert all(isinstance(v, float) for v in numeric.values())
    assert isinstance(result["pred"], str) and isinstance(result["source"], str)
    assert importlib.util.find_spec("r2i.reward") is not None  # pkg://r2i.reward works too


# ---------------------------------------------------------------------------------------------
# With the judge (a real sim-judge process)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServerProcess]:
    srv = SimServerProcess("--world", str(tiny_world(tmp_path_factory)), "--latency", "0.02")
    yield srv
    srv.stop()
    shared_judge_thread().close()


def judge_kwargs(server_url: str, cache: Path, **extra: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {"judge_base_url": server_url + "/v1", "judge_model": "sim-judge",
                          "judge_max_concurrency": 8, "judge_timeout_s": 10,
                          "judge_max_retries": 1, "judge_cache_dir": str(cache)}
    kw.update(extra)
    return kw


def test_compute_score_asks_the_judge(judge_server: SimServerProcess, tmp_path: Path):
    kw = judge_kwargs(judge_server.base_url, tmp_path / "cache")
    before = judge_server.requests()
    out = compute_score("r2i", wrap("blue"), "B", INFO, **kw)
    assert out == {"score": 1.0, "acc": 1.0, "format": 1.0, "source": "judge", "pred": "blue"}
    assert compute_score("r2i", wrap("red"), "B", INFO, **kw)["source"] == "judge"
    assert compute_score("r2i", wrap("red"), "B", INFO, **kw)["acc"] == 0.0
    assert compute_score("r2i", wrap("B"), "B", INFO, **kw)["source"] == "exact"
    assert judge_server.requests() - before == 2  # decided and repeated answers are not sent
    # one loop thread and one judge (one HTTP session) per process, reused by every call
    runner = shared_judge_thread()
    assert runner.thread is not None and runner.thread.is_alive()
    settings = reward.judge_settings(kw)
    assert settings is not None
    assert runner.judge(settings) is runner.judge(settings)


def test_sync_calls_from_many_threads(judge_server: SimServerProcess, tmp_path: Path):
    """verl's reward loop runs a sync reward function in a thread pool."""
    kw = judge_kwargs(judge_server.base_url, tmp_path / "cache")
    answers = [f"blue {'tone ' * i}".strip() for i in range(12)] + ["blue colored"]
    threads_before = threading.active_count()
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda a: compute_score("r2i", wrap(a), "B", INFO, **kw), answers))
    assert all(o["source"] == "judge" for o in outs)
    assert outs[-1]["acc"] == 1.0
    assert threading.active_count() <= threads_before + 1  # no thread per call


def test_compute_score_batch_judges_concurrently(judge_server: SimServerProcess, tmp_path: Path):
    kw = judge_kwargs(judge_server.base_url, tmp_path / "cache")
    responses = [wrap("B"), wrap("C"), "no tags", wrap("blue"), wrap("green")]
    responses += [wrap(f"green {'x' * i}") for i in range(1, 11)] + [wrap("blue")]
    judge_server.reset()
    outs = compute_score_batch(["r2i"] * len(responses), responses, ["B"] * len(responses),
                               [INFO] * len(responses), **kw)
    assert [o["source"] for o in outs[:5]] == ["exact", "mcq_letter", "no_answer_tag", "judge",
                                              "judge"]
    assert [o["acc"] for o in outs[:5]] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert outs[-1] == outs[3]
    stats = judge_server.stats()
    assert stats["requests"] == 12  # unique undecided answers only
    assert stats["max_in_flight"] > 1  # judged concurrently, not one after the other


def test_compute_score_async(judge_server: SimServerProcess, tmp_path: Path):
    kw = judge_kwargs(judge_server.base_url, tmp_path / "cache")

    async def go() -> list[dict[str, Any]]:
        return list(await asyncio.gather(
            compute_score_async("r2i", wrap("blue"), "B", INFO, **kw),
            compute_score_async("r2i", wrap("C"), "B", INFO, **kw),
            compute_score_async("r2i", wrap("blue"), "B", INFO),
        ))

    a, b, c = asyncio.run(go())
    assert (a["acc"], a["source"]) == (1.0, "judge")
    assert (b["acc"], b["source"]) == (0.0, "mcq_letter")
    assert (c["acc"], c["source"]) == (0.0, "no_judge")


def test_dead_judge_never_crashes_a_step(tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    kw = judge_kwargs(dead, tmp_path / "cache", judge_timeout_s=0.5, judge_max_retries=0)
    t0 = time.perf_counter()
    out = compute_score("r2i", wrap("blue"), "B", INFO, **kw)
    assert (out["score"], out["source"]) == (0.0, "judge_unavailable")
    outs = compute_score_batch(["r2i"] * 3, [wrap("B"), wrap("blue"), wrap("navy")], ["B"] * 3,
                               [INFO] * 3, **kw)
    assert [(o["acc"], o["source"]) for o in outs] == [
        (1.0, "exact"), (0.0, "judge_unavailable"), (0.0, "judge_unavailable")]
    assert time.perf_counter() - t0 < 5
