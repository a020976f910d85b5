"""Rule script: generate the toy world (the embedded default's images, truth and toy benchmark).

The toy world and the simulated models built on it are test doubles and the offline demo.
"""

from r2i.synthesis.entry import setup_logging
from r2i.toy.world import generate_world, size_params

setup_logging(snakemake.log[0])  # noqa: F821
p = snakemake.params  # noqa: F821
kwargs = size_params(p["size"])
kwargs["short_side"] = p["short_side"]
generate_world(p["out_dir"], seed=p["seed"], **kwargs)
