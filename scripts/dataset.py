"""Rule script: gather shards into train/val parquet (verl schema), funnel, card, contamination check."""

import logging
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.arrowlite import skip_pandas

skip_pandas()  # this job never converts to pandas: spare pyarrow's 0.8 s pandas import

from r2i.joblog import setup_logging
from r2i.synthesis.dataset import gather

setup_logging(snakemake.log[0])  # noqa: F821
p = snakemake.params  # noqa: F821
funnel = gather(
    shard_root=p["shard_root"],
    shards=p["shards"],
    stages=p["stages"],
    manifest_summary_path=snakemake.input["summary"],  # noqa: F821
    benchmarks=p["benchmarks"],
    answer_format_path=p["prompts"]["answer_format"],
    settings=p["settings"],
    run=p["run"],
    models=p["models"],
    simulated=p["simulated"],
    out_train=snakemake.output["train"],  # noqa: F821
    out_val=snakemake.output["val"],  # noqa: F821
    out_card=snakemake.output["card"],  # noqa: F821
    out_funnel=snakemake.output["funnel"],  # noqa: F821
    out_contamination=snakemake.output["contamination"],  # noqa: F821
    pixel_hashes=f"{snakemake.config['cache_dir']}/pixel-sha256.json",  # noqa: F821
    index=snakemake.input["index"],  # noqa: F821
)
logging.getLogger("r2i.dataset").info("dataset: %s", funnel["splits"])

from r2i.smkexit import freeze_heap

freeze_heap()  # outputs are written: spare the exit-time sweep over the whole heap
