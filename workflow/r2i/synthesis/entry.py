"""Bodies of the synthesis rule scripts (``scripts/synth_*.py`` call these).

Each entry reads its inputs, opens the models it needs, runs its stage, and writes the stage table
and a small stats file (items in/out, model calls, tokens, seconds) that the funnel and the report
read. If some items hit a persistent model error, the good rows are not written as the output:
the job fails with a message listing the failed items, and its finished calls stay in the cache,
so the automatic retry only re-sends what failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from r2i.images import set_max_pixels
from r2i.io import read_json, write_json
from r2i.prompts import load_seed_questions, load_templates
from r2i.segment import make_segmenter
from r2i.synthesis import stages
from r2i.synthesis.records import Row, read_rows, write_rows
from r2i.synthesis.runtime import ModelSet

log = logging.getLogger("r2i.stage")


class StageError(RuntimeError):
    pass


def setup_logging(log_file: str | Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip


def _finish(stage: str, rows: list[Row], n_in: int, out: str, stats_out: str, started: float, calls: dict[str, Any]) -> None:
    errors = [r for r in rows if r.record.get("model_error")]
    if errors:
        sample = "; ".join(f"{r.item_id}: {r.record.get('error')}" for r in errors[:5])
        raise StageError(
            f"{stage}: {len(errors)} of {n_in} items failed after retries ({sample}). Finished calls "
            f"are cached; rerun the job to retry only these."
        )
    write_rows(out, rows)
    reasons = Counter(r.reason for r in rows if not r.kept)
    stats = {
        "stage": stage,
        "items_in": n_in,
        "rows": len(rows),
        "kept": sum(r.kept for r in rows),
        "dropped": dict(sorted(reasons.items())),
        "seconds": round(time.monotonic() - started, 3),
        "calls": calls,
    }
    write_json(stats_out, stats)
    log.info("%s: %d in, %d kept, dropped %s", stage, n_in, stats["kept"], dict(reasons))


def run_stage(stage: str, **kwargs: Any) -> None:
    """Run one synthesis stage for one shard; any failure is also written to the stage's log."""
    try:
        _run_stage(stage, **kwargs)
    except Exception:
        log.exception("%s failed", stage)
        raise


def _run_stage(
    stage: str,
    *,
    inputs: Mapping[str, str],
    output: str,
    stats_out: str,
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    log_file: str | None = None,
) -> None:
    """Run one synthesis stage for one shard (called from the rule's script).

    ``params`` carries what determines the results (settings, model names); ``config`` supplies
    how to reach the endpoints.
    """
    setup_logging(log_file)
    set_max_pixels(int(config["manifest"]["max_image_pixels"]))
    started = time.monotonic()
    prompts = load_templates(params["prompts"])
    p = params["settings"]
    log_dir = Path(config["results_dir"]) / "logs" / config["run"] / "endpoints"

    async def with_models(roles: list[str], fn: Callable[[ModelSet], Any]) -> tuple[list[Row], dict[str, Any]]:
        specs = {
            r: {
                **params["models"][r],
                "endpoint_config": {
                    "name": config["models"][r]["endpoint"],
                    **config["endpoints"][config["models"][r]["endpoint"]],
                },
            }
            for r in roles
        }
        async with ModelSet(specs, config["cache_dir"], log_dir=log_dir) as models:
            rows = await fn(models)
        return rows, models.stats.to_dict()

    # Items in flight: enough to keep every endpoint of the stage busy.
    endpoints = {config["models"][r]["endpoint"] for r in params.get("models", {})}
    concurrency = max(4, sum(int(config["endpoints"][e].get("max_concurrency", 16)) for e in endpoints))

    if stage == "objects":
        images = read_json(inputs["shard"])["images"]
        segmenter = make_segmenter(params["segmenter"])
        rows, calls = asyncio.run(
            with_models(["teacher"], lambda m: stages.objects_stage(images, m, segmenter, prompts, p, concurrency))
        )
        n_in = len(images)
    elif stage == "crops":
        objects = read_rows(inputs["objects"], only_kept=True)
        rows, calls = asyncio.run(stages.crops_stage(objects, p, concurrency)), {}
        n_in = len(objects)
    elif stage == "questions":
        crops = read_rows(inputs["crops"], only_kept=True)
        seeds = load_seed_questions(inputs["seeds"])
        rows, calls = asyncio.run(
            with_models(["teacher"], lambda m: stages.questions_stage(crops, m, prompts, seeds, p, concurrency))
        )
        n_in = len(crops)
    elif stage == "answers":
        questions = read_rows(inputs["questions"], only_kept=True, with_blobs=False)
        blobs = {r.item_id: r.blob for r in read_rows(inputs["crops"], only_kept=True)}
        rows, calls = asyncio.run(
            with_models(
                ["teacher", "teacher_b", "consensus"],
                lambda m: stages.answers_stage(questions, blobs, m, prompts, p, concurrency),
            )
        )
        n_in = len(questions)
    elif stage == "mcq":
        answers = read_rows(inputs["answers"], only_kept=True, with_blobs=False)
        rows, calls = asyncio.run(
            with_models(["teacher"], lambda m: stages.mcq_stage(answers, m, prompts, p, concurrency))
        )
        n_in = len(answers)
    elif stage == "difficulty":
        mcqs = read_rows(inputs["mcq"], only_kept=True)
        rows, calls = asyncio.run(
            with_models(["student", "judge"], lambda m: stages.difficulty_stage(mcqs, m, prompts, p, concurrency))
        )
        n_in = len(mcqs)
    else:
        raise ValueError(f"unknown synthesis stage {stage!r}")
    _finish(stage, rows, n_in, output, stats_out, started, calls)
