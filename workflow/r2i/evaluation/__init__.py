"""Evaluation: benchmarks in a common format, single-pass and zoom-tool inference, judging,
dual-view metrics (the zooming gap) with bootstrap confidence intervals.

Entry points used by the rules (``rules/evaluate.smk``):

* :func:`evaluate_view`: one model x benchmark x view (``full``, ``crop`` or ``tool``) ->
  per-item JSONL records (response, answer and how it was found, verdict and its source,
  latency, tokens) and the view's run facts (wall-clock throughput at the concurrency used, the
  per-item latency at concurrency 1 from a sequential probe);
* :func:`write_metrics`: the views' records and run facts -> ``metrics.json`` and a merged
  ``items.jsonl``.

See docs/evaluation.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2i.client import EndpointConfig
from r2i.io import read_json, read_jsonl, write_json, write_jsonl
from r2i.judge import DEFAULT_JUDGE_MAX_TOKENS, DEFAULT_JUDGE_PROMPT, LLMJudge
from r2i.synthesis.runtime import ModelSet

from .benchmarks import (
    BenchmarkMissingError,
    EvalItem,
    benchmark_input_files,
    from_json,
    from_zoombench_parquet,
    load_benchmark,
    missing_benchmark_message,
)
from .infer import Sampling, infer_item, judge_records, run_inference
from .metrics import build_metrics, latency_stats, paired_bootstrap_diff, zooming_gap
from .zoomtool import ZoomSettings, run_tool_agent, run_tool_baseline

__all__ = [
    "VIEWS",
    "BenchmarkMissingError",
    "EvalItem",
    "EvalSettings",
    "EvalWorkflow",
    "Sampling",
    "ZoomSettings",
    "benchmark_files_of",
    "build_metrics",
    "evaluate_items",
    "evaluate_view",
    "from_json",
    "from_zoombench_parquet",
    "load_benchmark",
    "missing_benchmark_message",
    "paired_bootstrap_diff",
    "probe_subset",
    "write_metrics",
    "zooming_gap",
]

log = logging.getLogger("r2i.evaluation")

VIEWS = ("full", "crop", "tool")


@dataclass(frozen=True)
class EvalSettings:
    """What determines one view's results (besides the model and the items)."""

    system_prompt: str
    tool_system_prompt: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    tool: ZoomSettings = field(default_factory=ZoomSettings)
    concurrency: int = 16
    #: items timed one at a time (concurrency 1) after the run: the per-item latency (0: off)
    probe_items: int = 0


def probe_subset(items: Sequence[EvalItem], k: int) -> list[EvalItem]:
    """``k`` items spread evenly over ``items`` (deterministic: first, last, evenly between)."""
    n = len(items)
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(items)
    if k == 1:
        return [items[0]]
    idx = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


#: Body field that keeps the probe's calls apart from the run's in the call cache (OpenAI
#: ``user``: accepted and ignored by vLLM, hosted APIs and the simulator).
PROBE_TAG = {"user": "r2i-latency-probe"}


async def _latency_probe(client: Any, name: str, items: Sequence[EvalItem], view: str,
                         settings: EvalSettings, max_pixels: int | None) -> dict[str, Any]:
    """Per-item latency at concurrency 1 (the paper's speed axis): ``settings.probe_items`` items,
    one after another, before the view's run.

    The probe's requests carry :data:`PROBE_TAG`, so they are distinct from the run's (which
    then measures its own throughput) but stable: a job killed and rerun answers the probe's
    finished calls from the call cache like any other call (nothing completed is re-sent). An
    item's latency is its model calls' latency as recorded when they were sent (one in flight)
    plus the client work between them measured now (image encoding, crops), so a cached probe
    reports the latency measured when its calls were first made (``cached_items`` says how many).
    """
    chosen = probe_subset(items, settings.probe_items)
    lat: list[float] = []
    errors = cached = 0
    for it in chosen:
        if view == "tool":
            rec = await run_tool_agent(client, name, it, settings.tool_system_prompt,
                                       settings.sampling, settings.tool, extra_fields=PROBE_TAG)
        else:
            rec = await infer_item(client, name, it, view, settings.system_prompt,
                                   settings.sampling, max_pixels, extra_fields=PROBE_TAG)
        if rec.get("error"):
            errors += 1
            continue
        cached += bool(rec.get("cached"))
        overhead = max(0.0, float(rec.get("item_s", 0.0)) - float(rec.get("call_wall_s", 0.0)))
        lat.append(float(rec["latency_s"]) + overhead)
    stats = latency_stats(lat)
    return {"concurrency": 1, "n": len(lat), "errors": errors, "cached_items": cached,
            "ids": [it.id for it in chosen], "latency_s": [round(v, 4) for v in lat], **stats,
            "samples_per_s": (1.0 / stats["mean"]) if stats["mean"] else None}


def _endpoint_spec(name: str, endpoints: Mapping[str, Any]) -> dict[str, Any]:
    if name not in endpoints:
        raise ValueError(f"evaluation: endpoint '{name}' is not defined under 'endpoints' "
                         f"(defined: {', '.join(sorted(endpoints)) or 'none'})")
    return {"name": name, **endpoints[name]}


async def evaluate_items(items: Sequence[EvalItem], view: str, *, model: Mapping[str, Any],
                         endpoints: Mapping[str, Any], settings: EvalSettings,
                         cache_dir: str | Path, judge: Mapping[str, Any] | None = None,
                         judge_prompt: str | Path | None = None,
                         log_dir: str | Path | None = None,
                         timing: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Records of ``items`` in ``view``, judged.

    ``model`` and ``judge`` are ``{endpoint, model}`` (endpoint names under ``endpoints``, the
    config's section; the judge may add ``max_tokens``); launched endpoints are started for the
    call and stopped after it. Every request goes through the persistent call cache in
    ``cache_dir`` (a rerun re-sends nothing). When ``timing`` is given it receives the run's
    facts: ``concurrency``, ``wall_s`` (from the first request to the last reply, servers already
    up, judging excluded), ``items_per_s`` (None when calls came from the cache: not a
    measurement), ``cached_items`` and ``latency_c1`` (:func:`_latency_probe`, run before the
    view's run when ``settings.probe_items``).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    roles: dict[str, dict[str, Any]] = {
        "model": {"model": model["model"],
                  "endpoint_config": _endpoint_spec(model["endpoint"], endpoints)}}
    if judge:
        roles["judge"] = {"model": judge["model"],
                          "endpoint_config": _endpoint_spec(judge["endpoint"], endpoints)}
    max_pixels = model.get("max_image_pixels")
    async with ModelSet(roles, cache_dir, log_dir=log_dir) as models:
        client = models.roles["model"].client
        name = models.model_name("model")
        # The probe runs first, while its prompts are new to the server: after the run, a
        # server's prefix / multimodal caches would answer the same prompts faster than a first
        # request (vLLM caches both by default).
        probe = (await _latency_probe(client, name, items, view, settings, max_pixels)
                 if timing is not None and settings.probe_items > 0 else None)
        t0 = time.perf_counter()
        if view == "tool":
            records = await run_tool_baseline(client, name, items, settings.tool_system_prompt,
                                              settings.sampling, settings.tool,
                                              settings.concurrency)
        else:
            records = await run_inference(client, name, items, view, settings.system_prompt,
                                          settings.sampling, settings.concurrency, max_pixels)
        wall = time.perf_counter() - t0
        if timing is not None:
            cached = sum(1 for r in records if r.get("cached"))
            timing.update(_throughput(len(records), wall, settings.concurrency, cached))
            if probe is not None:
                timing["latency_c1"] = probe
        llm_judge: LLMJudge | None = None
        if judge:
            jc = models.roles["judge"].client
            cfg: EndpointConfig = jc.cfg
            llm_judge = LLMJudge(cfg, judge["model"], judge_prompt or DEFAULT_JUDGE_PROMPT,
                                 cache_dir, base_url=jc.base_url, stats=models.stats,
                                 max_tokens=int(judge.get("max_tokens") or DEFAULT_JUDGE_MAX_TOKENS))
        try:
            await judge_records(records, items, llm_judge)
        finally:
            if llm_judge is not None:
                await llm_judge.aclose()
    return records


def _throughput(n: int, wall_s: float, concurrency: int, cached: int) -> dict[str, Any]:
    """Wall-clock throughput of one view's run at ``concurrency`` items in flight."""
    out: dict[str, Any] = {"items": n, "concurrency": concurrency, "wall_s": round(wall_s, 4),
                           "cached_items": cached, "items_per_s": None, "note": None}
    if n and cached == 0 and wall_s > 0:
        out["items_per_s"] = n / wall_s
    elif cached:
        out["note"] = (f"{cached} of {n} items were answered from the call cache, so the wall time "
                       "is not a throughput measurement (a fresh cache_dir measures it)")
    return out


def evaluate_view(benchmark: str, benchmark_spec: Mapping[str, Any], view: str, *,
                  out: str | Path, run_out: str | Path | None = None,
                  **kwargs: Any) -> list[dict[str, Any]]:
    """Load benchmark ``benchmark``, evaluate ``view`` (:func:`evaluate_items` keywords) and
    write the per-item JSONL to ``out`` and the run facts (throughput, latency at concurrency 1,
    skipped items) to ``run_out`` (atomically; nothing is written when a model call failed for
    good: finished calls are cached, so a rerun only redoes the failed items).

    In the ``crop`` view, items without a crop image are not sent; they get a record with
    ``skipped: "no_crop_image"`` (no verdict), counted in metrics.json.
    """
    from r2i import asyncrun

    items = load_benchmark(benchmark, benchmark_spec)
    position = {it.id: k for k, it in enumerate(items)}
    skipped: list[dict[str, Any]] = []
    if view == "crop":
        skipped = [{"id": it.id, "dimension": it.dimension, "view": view,
                    "reference": it.reference, "skipped": "no_crop_image", "correct": None}
                   for it in items if not it.crop_images]
        items = [it for it in items if it.crop_images]
        if skipped:
            log.warning("%s/crop: %d of %d items have no crop image and are skipped in this view "
                        "(e.g. %s)", benchmark, len(skipped), len(items) + len(skipped),
                        [r["id"] for r in skipped[:3]])
    timing: dict[str, Any] = {}
    records = asyncrun.run(evaluate_items(items, view, timing=timing, **kwargs)) if items else []
    failed = [r for r in records if r.get("error")]
    if failed:
        sample = "; ".join(f"{r['id']}: {r['error']}" for r in failed[:5])
        raise RuntimeError(f"{benchmark}/{view}: {len(failed)} of {len(records)} items failed "
                           f"after retries ({sample}). Finished calls are cached; rerun to retry "
                           "only these.")
    write_jsonl(out, sorted([*records, *skipped], key=lambda r: position[r["id"]]))
    if run_out is not None:
        reasons: dict[str, int] = {}
        for r in skipped:
            reasons[r["skipped"]] = reasons.get(r["skipped"], 0) + 1
        write_json(run_out, {"benchmark": benchmark, "view": view, "skipped": reasons, **timing})
    acc = sum(bool(r["correct"]) for r in records) / max(1, len(records))
    log.info("%s/%s: %d items (%d skipped), accuracy %.3f, %s", benchmark, view, len(records),
             len(skipped), acc, _speed_line(timing))
    return records


def _speed_line(timing: Mapping[str, Any]) -> str:
    parts = []
    if timing.get("items_per_s"):
        parts.append(f"{timing['items_per_s']:.2f} items/s at concurrency {timing['concurrency']}")
    c1 = timing.get("latency_c1") or {}
    if c1.get("mean"):
        parts.append(f"{c1['mean']:.2f} s/item at concurrency 1 (n={c1['n']})")
    return ", ".join(parts) or "no timing"


def write_metrics(view_files: Mapping[str, str | Path], *, model: str, benchmark: str,
                  metrics_out: str | Path, items_out: str | Path | None = None,
                  n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05,
                  run_files: Mapping[str, str | Path] | None = None) -> dict[str, Any]:
    """Gather the views' JSONL records (and their run facts, ``run_files``: throughput, latency
    at concurrency 1, skipped items) into ``metrics.json``, and a merged per-item JSONL: one row
    per item with each view's answer, verdict and latency."""
    views = {v: read_jsonl(p) for v, p in view_files.items()}
    runs = {v: read_json(p) for v, p in (run_files or {}).items()}
    doc = build_metrics(views, model=model, benchmark=benchmark, n_boot=n_boot, seed=seed,
                        alpha=alpha, runs=runs)
    write_json(metrics_out, doc)
    if items_out is not None:
        merged: dict[str, dict[str, Any]] = {}
        for v, recs in views.items():
            for r in recs:
                row = merged.setdefault(r["id"], {"id": r["id"], "dimension": r.get("dimension"),
                                                  "reference": r.get("reference")})
                row[v] = {k: r.get(k) for k in ("answer", "answer_source", "correct",
                                                "verdict_source", "skipped", "latency_s",
                                                "tool_calls") if k in r}
        write_jsonl(items_out, merged.values())
    return doc


#: The shipped system prompt of each zoom-tool variant (workflow paths, resolved by the rules).
TOOL_PROMPTS = {"qwen_agent": "workflow/r2i/data/prompts/zoom_tool_system.txt",
                "pixel": "workflow/r2i/data/prompts/zoom_tool_pixel_system.txt"}


def benchmark_files_of(config: Mapping[str, Any], name: str,
                       error: type[Exception] = ValueError) -> list[str]:
    """Input files of benchmark ``name`` (:func:`benchmark_input_files`); the toy world's
    benchmark, which a rule makes, is returned as configured; anything else missing raises
    ``error`` saying how to get it."""
    spec = config["benchmarks"][name]
    toy = config.get("toy_world") or {}
    raw = spec["path"]
    if isinstance(raw, str) and bool(toy.get("enabled")) and Path(raw) == Path(
            toy.get("dir", "resources/toy"), "benchmark", "zoombench_toy.parquet"):
        return [raw]
    try:
        return benchmark_input_files(spec)
    except BenchmarkMissingError as err:
        shown = ", ".join(map(str, raw)) if isinstance(raw, list) else str(raw)
        raise error(missing_benchmark_message(name, spec["format"], shown) + f" ({err})") from None


class EvalWorkflow:
    """Input functions, params and targets of ``rules/evaluate.smk`` (kept here so the rule file
    holds rules only). ``resolve`` maps a configured prompt path to an existing file (the
    working directory first, then the workflow's copy); ``error`` is the exception class raised
    for configuration problems (Snakemake's ``WorkflowError`` in the workflow)."""

    def __init__(self, config: Mapping[str, Any], results: str | Path, *,
                 resolve: Any = str, error: type[Exception] = ValueError) -> None:
        self.config = config
        self.ev: Mapping[str, Any] = config["evaluation"]
        self.dir = Path(results) / "eval"
        self.att_dir = Path(results) / "attention"
        self.att: Mapping[str, Any] = self.ev["attention"]
        self.resolve = resolve
        self.error = error

    def problems(self) -> list[str]:
        """Configuration errors of the evaluation section (endpoints, benchmarks)."""
        out: list[str] = []
        endpoints = self.config["endpoints"]
        for name, spec in self.ev["models"].items():
            if spec["endpoint"] not in endpoints:
                out.append(f"evaluation.models.{name}.endpoint: endpoint '{spec['endpoint']}' "
                           "is not defined under 'endpoints'")
        judge = self.ev["judge"]
        if judge and judge["endpoint"] not in endpoints:
            out.append(f"evaluation.judge.endpoint: endpoint '{judge['endpoint']}' is not "
                       "defined under 'endpoints' (evaluation.judge: null for rules only)")
        benches = self.config.get("benchmarks") or {}
        for name in self.ev["benchmarks"]:
            if name not in benches:
                out.append(f"evaluation.benchmarks: '{name}' is not defined under 'benchmarks' "
                           f"(defined: {', '.join(sorted(benches)) or 'none'})")
        for name in self.attention_benchmarks():
            if name not in benches:
                out.append(f"evaluation.attention.benchmarks: '{name}' is not defined under "
                           f"'benchmarks' (defined: {', '.join(sorted(benches)) or 'none'})")
        return out

    def attention_benchmarks(self) -> list[str]:
        b = self.att["benchmarks"]
        return list(self.ev["benchmarks"] if b is None else b)

    def attention_targets(self) -> list[Path]:
        """``summary.json`` of every attention model x benchmark (for ``rule all``)."""
        return [self.att_dir / m / b / "summary.json" for m in self.att["models"]
                for b in self.attention_benchmarks()]

    def attention_files(self, name: str) -> list[Path]:
        """``name`` (e.g. ``coverage.jsonl``) of every attention model x benchmark."""
        return [p.with_name(name) for p in self.attention_targets()]

    def metrics_files(self) -> list[Path]:
        """``metrics.json`` of every evaluation model x benchmark."""
        return [self.dir / m / b / "metrics.json" for m in self.ev["models"]
                for b in self.ev["benchmarks"]]

    def attention_output(self, name: str) -> str:
        return str(self.att_dir / "{model}" / "{benchmark}" / name)

    def attention_model_dir(self, wildcards: Any) -> str:
        """The model directory (a rule output such as the merged student is built first)."""
        models = self.att["models"]
        if wildcards.model not in models:
            raise self.error(f"attention: model '{wildcards.model}' is not in "
                             f"evaluation.attention.models ({', '.join(models) or 'none'})")
        return str(models[wildcards.model]["path"])

    def attention_params(self, wildcards: Any) -> dict[str, Any]:
        """What determines coverage besides the model directory's files."""
        return {
            "benchmark": dict(self.config["benchmarks"][wildcards.benchmark]),
            **{k: self.att[k] for k in ("layer", "box_mapping", "max_pixels", "heatmaps",
                                        "device")},
        }

    def targets(self) -> list[Path]:
        """``metrics.json`` of every configured model x benchmark (for ``rule all``)."""
        problems = self.problems()
        if problems:
            raise self.error("invalid evaluation configuration:\n  - " + "\n  - ".join(problems))
        return self.metrics_files() + self.attention_targets()

    def records(self, model: str = "{model}", benchmark: str = "{benchmark}",
                view: str = "{view}") -> str:
        return str(self.dir / model / benchmark / f"{view}.jsonl")

    def output(self, name: str) -> str:
        return str(self.dir / "{model}" / "{benchmark}" / name)

    def benchmark_file(self, wildcards: Any) -> list[str]:
        """The benchmark's files (every parquet shard of a ``zoombench`` folder, glob or list;
        the JSON file); a missing one that no rule makes fails with how to get it."""
        return benchmark_files_of(self.config, wildcards.benchmark, self.error)

    def run_info(self, model: str = "{model}", benchmark: str = "{benchmark}",
                 view: str = "{view}") -> str:
        """A view's run facts (throughput, latency at concurrency 1, skipped items)."""
        return str(self.dir / model / benchmark / f"{view}.run.json")

    def run_files(self, wildcards: Any) -> list[str]:
        return [self.run_info(wildcards.model, wildcards.benchmark, v) for v in self.ev["views"]]

    def system_prompt(self, wildcards: Any) -> str:
        if wildcards.view == "tool":
            path = self.ev["tool_system_prompt"] or TOOL_PROMPTS[self.ev["tool"]["variant"]]
        else:
            path = self.ev["system_prompt"]
        return str(self.resolve(path))

    def judge_prompt(self) -> str:
        return str(self.resolve(self.ev["judge_prompt"] or self.config["prompts"]["judge"]))

    def params(self, wildcards: Any) -> dict[str, Any]:
        """What determines a view's results: model, benchmark, sampling, tool, judge."""
        m = self.ev["models"][wildcards.model]
        return {
            "model": {k: m.get(k) for k in ("endpoint", "model", "max_image_pixels")},
            "benchmark": dict(self.config["benchmarks"][wildcards.benchmark]),
            "sampling": dict(self.ev["sampling"]),
            "tool": dict(self.ev["tool"]) if wildcards.view == "tool" else None,
            "judge": self.ev["judge"],
            "concurrency": self.ev["concurrency"],
            "probe_items": self.ev["speed"]["probe_items"],
        }

    def gpus(self, wildcards: Any) -> int:
        """GPUs a job needs: the launched servers of its model and judge (each once)."""
        endpoints = self.config["endpoints"]
        names = {self.ev["models"][wildcards.model]["endpoint"]}
        if self.ev["judge"]:
            names.add(self.ev["judge"]["endpoint"])
        return sum(int(endpoints[n].get("gpus", 0)) for n in sorted(names)
                   if n in endpoints and "launch" in endpoints[n])

    def view_files(self, wildcards: Any) -> list[str]:
        return [self.records(wildcards.model, wildcards.benchmark, v) for v in self.ev["views"]]
