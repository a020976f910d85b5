# R2I: Region-to-Image Distillation as a reproducible Snakemake workflow.
# Entry point: validates the config (unknown keys and wrong types fail here, before any job),
# then includes the stage rules. Logic lives in the `r2i` package under workflow/.


from snakemake.utils import min_version

min_version("9.0")


# The embedded default (toy world + simulated models). A config file given with --configfile
# replaces it instead of being merged into it, so production pools and endpoints never mix with
# the toy ones; --config key=value still overrides single keys.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/synthesis.smk"


rule all:
    input:
        synthesis_targets(),
    default_target: True
