"""Rule script `eval_metrics`: the views of one model x benchmark -> metrics.json + items.jsonl."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.evaluation import write_metrics
from r2i.joblog import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
b = sm.params["bootstrap"]
write_metrics(
    dict(zip(sm.params["views"], sm.input["views"], strict=True)),
    model=sm.wildcards["model"],
    benchmark=sm.wildcards["benchmark"],
    metrics_out=sm.output["metrics"],
    items_out=sm.output["per_item"],
    n_boot=int(b["n_boot"]),
    seed=int(b["seed"]),
    alpha=float(b["alpha"]),
    run_files=dict(zip(sm.params["views"], sm.input["runs"], strict=True)),
)
