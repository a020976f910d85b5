# R2I: Region-to-Image Distillation as a reproducible Snakemake workflow.
# Entry point: validates the config (unknown keys and wrong types fail here, before any job),
# then includes the stage rules. Logic lives in the `r2i` package under workflow/.


from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/synthesis.smk"


rule all:
    input:
        synthesis_targets(),
    default_target: True
