"""Rule script: generate the toy world (the embedded default's images, truth and toy benchmark)."""

from r2i.toy.world import generate_world_for_size

generate_world_for_size(
    snakemake.params["out_dir"],  # noqa: F821
    size=snakemake.params["size"],  # noqa: F821
    seed=snakemake.params["seed"],  # noqa: F821
    short_side=snakemake.params["short_side"],  # noqa: F821
)
