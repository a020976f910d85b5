"""Rule script of `synthesize`: every synthesis stage of one shard as one streaming job."""

from r2i.synthesis.entry import run_shard

STAGES = ("objects", "crops", "questions", "answers", "mcq", "difficulty")

run_shard(
    shard_list=snakemake.input["shard"],  # noqa: F821
    outputs={s: (snakemake.output[s], snakemake.output[f"{s}_stats"]) for s in STAGES},  # noqa: F821
    params=dict(snakemake.params.items()),  # noqa: F821
    config=snakemake.config,  # noqa: F821
    log_file=snakemake.log[0],  # noqa: F821
)
