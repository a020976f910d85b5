"""Rule script (checkpoint): scan the pools, write the manifest and the per-shard image lists.

A shard list is rewritten only when its content changes, so only shards whose images changed
rerun downstream.
"""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.arrowlite import skip_pandas

skip_pandas()  # this job never converts to pandas: spare pyarrow's 0.8 s pandas import

from r2i.joblog import setup_logging
from r2i.manifest import build_manifest

setup_logging(snakemake.log[0])  # noqa: F821
p = snakemake.params  # noqa: F821
build_manifest(
    p["pools"],
    manifest_path=snakemake.output["manifest"],  # noqa: F821
    summary_path=snakemake.output["summary"],  # noqa: F821
    shard_dir=p["shard_dir"],
    n_shards=p["settings"]["shards"],
    min_side=p["settings"]["min_side"],
    max_pixels=p["settings"]["max_image_pixels"],
    state_dir=p["state_dir"],
    workers=snakemake.threads,  # noqa: F821
)
