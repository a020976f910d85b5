"""Rule script for the per-shard synthesis stages (objects, crops, questions, answers, mcq, difficulty)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.synthesis.entry import run_stage

run_stage(
    snakemake.params["stage"],  # noqa: F821
    inputs={k: v for k, v in snakemake.input.items()},  # noqa: F821
    output=snakemake.output["table"],  # noqa: F821
    stats_out=snakemake.output["stats"],  # noqa: F821
    params=dict(snakemake.params.items()),  # noqa: F821
    config=snakemake.config,  # noqa: F821
    log_file=snakemake.log[0],  # noqa: F821
)
