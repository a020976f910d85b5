"""Rule script `evaluate`: one model x benchmark x view -> per-item JSONL (r2i.evaluation)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.evaluation import EvalSettings, Sampling, ZoomSettings, evaluate_view
from r2i.joblog import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
cfg = sm.config
s = sm.params["settings"]
view = sm.params["view"]
settings = EvalSettings(
    system_prompt=Path(sm.input["system_prompt"]).read_text(encoding="utf-8"),
    tool_system_prompt=Path(sm.input["system_prompt"]).read_text(encoding="utf-8"),
    sampling=Sampling.from_config(s["sampling"]),
    tool=ZoomSettings.from_config(s["tool"]),
    concurrency=int(s["concurrency"]),
    probe_items=int(s["probe_items"]),
)
evaluate_view(
    sm.params["benchmark_name"],
    s["benchmark"],
    view,
    out=sm.output["records"],
    run_out=sm.output["run"],
    model=s["model"],
    endpoints=cfg["endpoints"],
    settings=settings,
    cache_dir=cfg["cache_dir"],
    judge=s["judge"],
    judge_prompt=sm.input["judge_prompt"],
    log_dir=Path(cfg["results_dir"]) / "logs" / cfg["run"] / "endpoints",
)
