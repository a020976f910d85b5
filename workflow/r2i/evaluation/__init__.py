"""Evaluation: benchmarks in a common format, single-pass and zoom-tool inference, judging,
dual-view metrics (the zooming gap) with bootstrap confidence intervals.

Entry points used by the rules (``rules/evaluate.smk``):

* :func:`evaluate_view`: one model x benchmark x view (``full``, ``crop`` or ``tool``) ->
  per-item JSONL records (response, answer, verdict and its source, latency, tokens);
* :func:`write_metrics`: the views' records -> ``metrics.json`` and a merged ``items.jsonl``.

See docs/evaluation.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2i.client import EndpointConfig
from r2i.io import read_jsonl, write_json, write_jsonl
from r2i.judge import DEFAULT_JUDGE_PROMPT, LLMJudge
from r2i.synthesis.runtime import ModelSet

from .benchmarks import (
    BenchmarkMissingError,
    EvalItem,
    from_json,
    from_zoombench_parquet,
    load_benchmark,
    missing_benchmark_message,
)
from .infer import Sampling, judge_records, run_inference
from .metrics import build_metrics, paired_bootstrap_diff, zooming_gap
from .zoomtool import ZoomSettings, run_tool_baseline

__all__ = [
    "VIEWS",
    "BenchmarkMissingError",
    "EvalItem",
    "EvalSettings",
    "EvalWorkflow",
    "Sampling",
    "ZoomSettings",
    "build_metrics",
    "evaluate_items",
    "evaluate_view",
    "from_json",
    "from_zoombench_parquet",
    "load_benchmark",
    "missing_benchmark_message",
    "paired_bootstrap_diff",
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


def _endpoint_spec(name: str, endpoints: Mapping[str, Any]) -> dict[str, Any]:
    if name not in endpoints:
        raise ValueError(f"evaluation: endpoint '{name}' is not defined under 'endpoints' "
                         f"(defined: {', '.join(sorted(endpoints)) or 'none'})")
    return {"name": name, **endpoints[name]}


async def evaluate_items(items: Sequence[EvalItem], view: str, *, model: Mapping[str, Any],
                         endpoints: Mapping[str, Any], settings: EvalSettings,
                         cache_dir: str | Path, judge: Mapping[str, Any] | None = None,
                         judge_prompt: str | Path | None = None,
                         log_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Records of ``items`` in ``view``, judged.

    ``model`` and ``judge`` are ``{endpoint, model}`` (endpoint names under ``endpoints``, the
    config's section); launched endpoints are started for the call and stopped after it. Every
    request goes through the persistent call cache in ``cache_dir`` (a rerun re-sends nothing).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    roles: dict[str, dict[str, Any]] = {
        "model": {"model": model["model"],
                  "endpoint_config": _endpoint_spec(model["endpoint"], endpoints)}}
    if judge:
        roles["judge"] = {"model": judge["model"],
                          "endpoint_config": _endpoint_spec(judge["endpoint"], endpoints)}
    async with ModelSet(roles, cache_dir, log_dir=log_dir) as models:
        client = models.roles["model"].client
        name = models.model_name("model")
        if view == "tool":
            records = await run_tool_baseline(client, name, items, settings.tool_system_prompt,
                                              settings.sampling, settings.tool,
                                              settings.concurrency)
        else:
            records = await run_inference(client, name, items, view, settings.system_prompt,
                                          settings.sampling, settings.concurrency,
                                          model.get("max_image_pixels"))
        llm_judge: LLMJudge | None = None
        if judge:
            jc = models.roles["judge"].client
            cfg: EndpointConfig = jc.cfg
            llm_judge = LLMJudge(cfg, judge["model"], judge_prompt or DEFAULT_JUDGE_PROMPT,
                                 cache_dir, base_url=jc.base_url, stats=models.stats)
        try:
            await judge_records(records, items, llm_judge)
        finally:
            if llm_judge is not None:
                await llm_judge.aclose()
    return records


def evaluate_view(benchmark: str, benchmark_spec: Mapping[str, Any], view: str, *,
                  out: str | Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Load benchmark ``benchmark``, evaluate ``view`` (:func:`evaluate_items` keywords) and
    write the per-item JSONL to ``out`` (atomically; not written when a model call failed for
    good: finished calls are cached, so a rerun only redoes the failed items)."""
    import asyncio

    items = load_benchmark(benchmark, benchmark_spec)
    if view == "crop":
        missing = [it.id for it in items if not it.crop_images]
        if missing:
            raise ValueError(f"benchmark '{benchmark}' has no crop image for {len(missing)} "
                             f"items (e.g. {missing[:3]}); drop 'crop' from evaluation.views")
    records = asyncio.run(evaluate_items(items, view, **kwargs))
    failed = [r for r in records if r.get("error")]
    if failed:
        sample = "; ".join(f"{r['id']}: {r['error']}" for r in failed[:5])
        raise RuntimeError(f"{benchmark}/{view}: {len(failed)} of {len(records)} items failed "
                           f"after retries ({sample}). Finished calls are cached; rerun to retry "
                           "only these.")
    write_jsonl(out, records)
    acc = sum(r["correct"] for r in records) / max(1, len(records))
    log.info("%s/%s: %d items, accuracy %.3f", benchmark, view, len(records), acc)
    return records


def write_metrics(view_files: Mapping[str, str | Path], *, model: str, benchmark: str,
                  metrics_out: str | Path, items_out: str | Path | None = None,
                  n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Gather the views' JSONL records into ``metrics.json`` (and a merged per-item JSONL:
    one row per item with each view's answer, verdict and latency)."""
    views = {v: read_jsonl(p) for v, p in view_files.items()}
    doc = build_metrics(views, model=model, benchmark=benchmark, n_boot=n_boot, seed=seed,
                        alpha=alpha)
    write_json(metrics_out, doc)
    if items_out is not None:
        merged: dict[str, dict[str, Any]] = {}
        for v, recs in views.items():
            for r in recs:
                row = merged.setdefault(r["id"], {"id": r["id"], "dimension": r.get("dimension"),
                                                  "reference": r.get("reference")})
                row[v] = {k: r.get(k) for k in ("answer", "correct", "verdict_source",
                                                "latency_s", "tool_calls") if k in r}
        write_jsonl(items_out, merged.values())
    return doc


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

    def _toy_benchmark(self, path: str) -> bool:
        toy = self.config.get("toy_world") or {}
        return bool(toy.get("enabled")) and Path(path) == Path(
            toy.get("dir", "resources/toy"), "benchmark", "zoombench_toy.parquet")

    def benchmark_file(self, wildcards: Any) -> str:
        """The benchmark's file; a missing one that no rule makes fails with how to get it."""
        spec = self.config["benchmarks"][wildcards.benchmark]
        path = str(spec["path"])
        if not Path(path).exists() and not self._toy_benchmark(path):
            raise self.error(missing_benchmark_message(wildcards.benchmark, spec["format"], path))
        return path

    def system_prompt(self, wildcards: Any) -> str:
        key = "tool_system_prompt" if wildcards.view == "tool" else "system_prompt"
        return str(self.resolve(self.ev[key]))

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
