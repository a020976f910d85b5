"""Rule script: hashes of the benchmarks' images and of the kept pool images (contamination check)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.arrowlite import skip_pandas

skip_pandas()  # this job never converts to pandas: spare pyarrow's 0.8 s pandas import

from r2i.io import write_json
from r2i.joblog import setup_logging
from r2i.manifest import read_manifest
from r2i.synthesis.dataset import contamination_index

setup_logging(snakemake.log[0])  # noqa: F821
kept = [(r.sha256, r.abs_path) for r in read_manifest(snakemake.input["manifest"]) if r.kept]  # noqa: F821
index = contamination_index(
    snakemake.params["benchmarks"],  # noqa: F821
    kept,
    pixel_hashes=f"{snakemake.config['cache_dir']}/pixel-sha256.json",  # noqa: F821
)
write_json(snakemake.output[0], index)  # noqa: F821
