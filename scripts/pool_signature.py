"""Rule script: write the first stat signature of the image pools (later runs refresh it at parse time)."""

from r2i.poolsig import update_pool_signature

update_pool_signature(snakemake.params["pools"], snakemake.output[0])  # noqa: F821
