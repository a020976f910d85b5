"""Rule script: generate the toy world (the embedded default's images, truth and toy benchmark).

The toy world and the simulated models built on it are test doubles and the offline demo.
"""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.joblog import setup_logging
from r2i.toy.world import generate_world, size_params

setup_logging(snakemake.log[0])  # noqa: F821
p = snakemake.params  # noqa: F821
kwargs = size_params(p["size"])
kwargs["short_side"] = p["short_side"]
generate_world(p["out_dir"], seed=p["seed"], **kwargs)
