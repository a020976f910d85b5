"""Body of the per-shard synthesis job (``scripts/synthesize.py`` calls :func:`run_shard`).

The job reads the shard's image list, looks up each stage in the stage memo, opens the models
lazily (a server is launched, or a standing one is contacted, only when a call misses the cache),
streams the items through every stage that needs computing (:mod:`r2i.synthesis.pipeline`) and
writes every stage's table and stats file. If some items hit a persistent model error, nothing is
written: the job fails with a message listing the failed items, and its finished calls stay in
the cache, so the automatic retry only re-sends what failed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r2i import asyncrun
from r2i.images import set_max_pixels
from r2i.io import read_json, write_json
from r2i.joblog import setup_logging
from r2i.prompts import load_seed_questions, load_templates
from r2i.segment import BackgroundSegmenter
from r2i.synthesis.memo import StageMemo, stage_key
from r2i.synthesis.pipeline import STAGES, ShardPipeline, StageTally, model_errors
from r2i.synthesis.records import Row, prewarm_in_background, read_rows, write_rows
from r2i.synthesis.runtime import ModelSet
from r2i.synthesis.stages import StageContext

log = logging.getLogger("r2i.stage")

#: Prompt templates each stage renders (their text is part of the stage's memo key).
STAGE_PROMPTS: dict[str, tuple[str, ...]] = {
    "objects": ("list_objects",),
    "crops": (),
    "questions": ("write_questions", "validate_question", "seed_questions"),
    "answers": ("answer_question", "consensus"),
    "mcq": ("focus_instruction", "distractors", "mcq"),
    "difficulty": ("answer_format", "judge"),
}
#: Model roles each stage calls.
STAGE_ROLES: dict[str, tuple[str, ...]] = {
    "objects": ("teacher",),
    "crops": (),
    "questions": ("teacher",),
    "answers": ("teacher", "teacher_b", "consensus"),
    "mcq": ("teacher",),
    "difficulty": ("student", "judge"),
}


class StageError(RuntimeError):
    pass


def memo_keys(images: list[dict[str, Any]], params: Mapping[str, Any], prompt_shas: Mapping[str, str],
              max_image_pixels: int) -> dict[str, str]:
    """The stage memo key of every stage of a shard (see :mod:`r2i.synthesis.memo`)."""
    keys: dict[str, str] = {}
    upstream: str | None = None
    for stage in STAGES:
        sp = params["stages"][stage]
        inputs: dict[str, Any] = {
            "settings": sp["settings"],
            "models": sp["models"],
            "prompts": {name: prompt_shas[name] for name in STAGE_PROMPTS[stage]},
        }
        if stage == "objects":
            inputs.update(
                images=[(e["hash"], e["path"]) for e in images],
                segmenter=params["segmenter"],
                max_image_pixels=max_image_pixels,
            )
        upstream = keys[stage] = stage_key(stage, upstream, inputs)
    return keys


def _stats_doc(t: StageTally, job_seconds: float, t0: float) -> dict[str, Any]:
    started, ended = t.span(t0)
    return {
        "stage": t.stage,
        "items_in": t.items_in,
        "rows": len(t.rows),
        "kept": t.kept,
        "dropped": t.dropped(),
        "seconds": round(t.seconds, 3),
        "started_s": started,  # first item in, after the job started (stages overlap)
        "ended_s": ended,  # last item out
        "job_seconds": round(job_seconds, 3),
        "from_memo": False,
        "calls": t.calls.to_dict(),
    }


def _replayed(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats of a stage taken from the memo: nothing was sent or computed in this job, and every
    call it made counts as answered from the cache (with its original cost, for the report)."""
    c = dict(stats.get("calls") or {})
    if c:
        c["cache_hits"] = int(c.get("cache_hits", 0)) + int(c.get("completed", 0))
        c["cached_prompt_tokens"] = int(c.get("cached_prompt_tokens", 0)) + int(c.get("prompt_tokens", 0))
        c["cached_completion_tokens"] = (int(c.get("cached_completion_tokens", 0))
                                         + int(c.get("completion_tokens", 0)))
        c["cached_latency_s"] = round(float(c.get("cached_latency_s", 0.0))
                                      + float(c.get("total_latency_s", 0.0)), 6)
        for k in ("requests_sent", "completed", "retries", "throttled", "prompt_tokens",
                  "completion_tokens", "dedup_hits"):
            if k in c:
                c[k] = 0
        c["total_latency_s"] = 0.0
        c["mean_latency_s"] = None
        c["retries_by_reason"] = {}
    out = {k: v for k, v in stats.items() if k != "memo_key"}
    out.update(calls=c, from_memo=True, seconds=0.0)
    return out


def run_shard(
    *,
    shard_list: str,
    outputs: Mapping[str, tuple[str, str]],
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    log_file: str | None = None,
    endpoint_log: str | None = None,
) -> None:
    """Run the synthesis stages of one shard (called from the rule's script).

    ``outputs`` maps each stage to its (table, stats) paths; ``params`` carries what determines
    the results (``stages``: per-stage settings, model names and prompt paths; ``segmenter``);
    ``config`` supplies how to reach the endpoints and where the caches are.
    """
    setup_logging(log_file)
    if endpoint_log is None and log_file:
        # one log per job and launched endpoint, next to the job's own log
        endpoint_log = str(Path(log_file).with_suffix("")) + ".endpoint-{name}.log"
    try:
        _run_shard(shard_list, outputs, params, config, endpoint_log)
    except Exception:
        log.exception("synthesis failed")
        raise


def _run_shard(shard_list: str, outputs: Mapping[str, tuple[str, str]], params: Mapping[str, Any],
               config: Mapping[str, Any], endpoint_log: str | None) -> None:
    started = time.monotonic()
    max_pixels = int(config["manifest"]["max_image_pixels"])
    set_max_pixels(max_pixels)
    images = read_json(shard_list)["images"]
    prompt_paths = dict(params["stages"]["objects"]["prompts"])
    prompts = load_templates(prompt_paths)
    shas = {name: t.sha for name, t in prompts.items()}
    keys = memo_keys(images, params, shas, max_pixels)
    memo = StageMemo(Path(config["cache_dir"]) / "stage-memo" if config.get("stage_memo", True) else None)

    # The first stage without a memo entry is where the stream starts.
    hits: dict[str, tuple[Path, dict[str, Any]]] = {}
    for stage in STAGES:
        hit = memo.lookup(keys[stage])
        if hit is None:
            break
        hits[stage] = hit
    start = len(hits)
    if start:
        log.info("stage memo: %s unchanged (reused); running %s", ", ".join(hits),
                 ", ".join(STAGES[start:]) or "nothing")
    tallies: dict[str, StageTally] = {}
    if start < len(STAGES):
        upstream_rows: list[Row] = []
        crop_blobs: dict[str, bytes] = {}
        if start > 0:
            upstream_rows = read_rows(hits[STAGES[start - 1]][0], only_kept=True)
        if start == 3:  # answers needs the crops themselves
            crop_blobs = {r.item_id: r.blob for r in read_rows(hits["crops"][0], only_kept=True)
                          if r.blob is not None}
        tallies = asyncrun.run(_stream(images, upstream_rows, crop_blobs, start, params, config,
                                       prompts, endpoint_log))
    job_seconds = time.monotonic() - started

    errors = model_errors(tallies)
    if errors:
        sample = "; ".join(f"{stage} {r.item_id}: {r.record.get('error')}" for stage, r in errors[:5])
        raise StageError(
            f"{len(errors)} items failed after retries ({sample}). Finished calls are cached; "
            f"rerun the job to retry only these."
        )
    for stage in STAGES:
        table, stats_path = outputs[stage]
        if stage in hits:
            memo.restore(hits[stage][0], Path(table))
            doc = _replayed(hits[stage][1])
            write_json(stats_path, doc)
        else:
            t = tallies[stage]
            write_rows(table, t.rows)
            doc = _stats_doc(t, job_seconds, started)
            write_json(stats_path, doc)
            memo.store(keys[stage], Path(table), doc)
        log.info("%s: %d in, %d kept, dropped %s%s", stage, doc["items_in"], doc["kept"],
                 json.dumps(doc["dropped"]), " (from the stage memo)" if stage in hits else "")


async def _stream(images: list[dict[str, Any]], upstream_rows: list[Row], crop_blobs: dict[str, bytes],
                  start: int, params: Mapping[str, Any], config: Mapping[str, Any],
                  prompts: Mapping[str, Any], endpoint_log: str | None) -> dict[str, StageTally]:
    run_stages = STAGES[start:]
    roles = sorted({r for s in run_stages for r in STAGE_ROLES[s]})
    specs = {
        r: {
            **params["stages"][next(s for s in run_stages if r in STAGE_ROLES[s])]["models"][r],
            "endpoint_config": {
                "name": config["models"][r]["endpoint"],
                **config["endpoints"][config["models"][r]["endpoint"]],
            },
        }
        for r in roles
    }
    log_dir = Path(config["results_dir"]) / "logs" / config["run"] / "endpoints"
    # built while the first requests are in flight (r2i.segment.BackgroundSegmenter)
    segmenter = BackgroundSegmenter(params["segmenter"], start=False) if start == 0 else None
    seeds = load_seed_questions(params["stages"]["questions"]["prompts"]["seed_questions"])
    settings = {s: params["stages"][s]["settings"] for s in STAGES}
    pipe_cfg = config.get("pipeline") or {}
    async with ModelSet(specs, config["cache_dir"], log_dir=log_dir, lazy=True,
                        slot_dir=config.get("slot_dir"), endpoint_log=endpoint_log,
                        on_first_request=segmenter.start if segmenter is not None else None) as models:
        ctx = StageContext(models=models, prompts=prompts, settings=settings,
                           segmenter=segmenter, seed_questions=seeds)
        pipe = ShardPipeline(ctx, start=start, crop_blobs=crop_blobs,
                             max_images_in_flight=int(pipe_cfg.get("max_images_in_flight", 32)),
                             on_first_image_done=prewarm_in_background)
        if start == 0:
            return await pipe.run(images=images)
        return await pipe.run(rows=upstream_rows)
