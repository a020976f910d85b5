"""Rule script `attention`: coverage of one model directory on one benchmark (docs/attention.md)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.evaluation.attention import run_attention
from r2i.joblog import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
s = sm.params["settings"]
run_attention(
    sm.input["model"],
    sm.wildcards["benchmark"],
    s["benchmark"],
    rows_out=sm.output["rows"],
    summary_out=sm.output["summary"],
    heatmap_dir=sm.output["heatmaps"],
    model_name=sm.wildcards["model"],
    layer=int(s["layer"]),
    max_pixels=int(s["max_pixels"]),
    heatmaps=int(s["heatmaps"]),
    device=None if s["device"] == "auto" else s["device"],
    box_mapping=s["box_mapping"],
)
