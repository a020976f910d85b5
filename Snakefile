# R2I: Region-to-Image Distillation as a reproducible Snakemake workflow.
# Entry point: validates the config (unknown keys and wrong types fail here, before any job),
# then includes the stage rules. Logic lives in the `r2i` package under workflow/.


import os

from snakemake.utils import min_version

min_version("9.0")


# The embedded default (toy world + simulated models). A config file given with --configfile
# replaces it instead of being merged into it, so production pools and endpoints never mix with
# the toy ones; --config key=value still overrides single keys.
# Looked up in the working directory first (a deployed copy), then next to this Snakefile.
DEFAULT_CONFIG = (
    "config/config.yaml"
    if os.path.exists("config/config.yaml")
    else os.path.join(workflow.basedir, "config", "config.yaml")
)

if not workflow.config_settings.configfiles:

    configfile: DEFAULT_CONFIG


include: "rules/common.smk"
include: "rules/synthesis.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        synthesis_targets(),
        evaluation_targets(),
        report_targets(),


# Named targets for common tasks (also what `r2i synthesize` / `r2i evaluate` ask for).
rule synthesis:
    input:
        synthesis_targets(),


rule evaluation:
    input:
        evaluation_targets(),


# GRPO training and the merged Hugging Face model: only on request (never part of `all`),
# e.g. `snakemake --profile profiles/slurm --configfile config/config.production.yaml training`.
rule training:
    input:
        TRAIN_DIR / "hf",


# The default target trains only if the config asks for the trained model's attention coverage.
for _name, _model in config["evaluation"]["attention"]["models"].items():
    if Path(_model["path"]).resolve().is_relative_to(TRAIN_DIR.resolve()):
        logger.warning(
            f"evaluation.attention.models.{_name} is a training output ({_model['path']}): "
            "the default target trains and merges a model (rules train, merge)"
        )


# Provenance after a kill: outputs of jobs that finished after Snakemake itself was killed have
# no provenance record; they are marked incomplete, so they are rebuilt (from the call cache)
# and recorded, and later settings changes rerun them (r2i.provenance).
mark_outputs_without_provenance(workflow)


# Parsing is done: leave the long-lived start-up heap out of garbage collection, which saves the
# interpreter's ~0.6 s sweep over it at exit (r2i.smkexit).
freeze_heap()


# The run is over when these run: cancel the scheduler's pending 1 s re-evaluation timer, which
# would otherwise hold the process open after the last job (r2i.smkexit).
onsuccess:
    cancel_scheduler_timers()


onerror:
    cancel_scheduler_timers()
