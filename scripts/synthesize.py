"""Rule script of `synthesize`: every synthesis stage of one shard as one streaming job."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.arrowlite import skip_pandas_at_first_use

# this job never converts to pandas: spare pyarrow's 0.8 s pandas import (at its first table,
# after the first model requests are out)
skip_pandas_at_first_use()

from r2i.synthesis.entry import run_shard

STAGES = ("objects", "crops", "questions", "answers", "mcq", "difficulty")

run_shard(
    shard_list=snakemake.input["shard"],  # noqa: F821
    outputs={s: (snakemake.output[s], snakemake.output[f"{s}_stats"]) for s in STAGES},  # noqa: F821
    params=dict(snakemake.params.items()),  # noqa: F821
    config=snakemake.config,  # noqa: F821
    log_file=snakemake.log[0],  # noqa: F821
)

from r2i.smkexit import freeze_heap

freeze_heap()  # outputs are written: spare the exit-time sweep over the whole heap
