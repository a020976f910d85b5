"""Rule script `eval_metrics`: the views of one model x benchmark -> metrics.json + items.jsonl."""

from r2i.evaluation import write_metrics
from r2i.synthesis.entry import setup_logging

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
