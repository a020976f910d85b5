"""Rule script: write the first stat signature of the image pools (later runs refresh it at parse time)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.poolsig import update_pool_signature

update_pool_signature(snakemake.params["pools"], snakemake.output[0])  # noqa: F821
