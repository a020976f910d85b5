# Config access, paths and input functions shared by all rule files.
import os
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from r2i.config import ConfigError, validate_config
from r2i.poolsig import update_pool_signature
from r2i.provenance import mark_outputs_without_provenance
from r2i.resources import ResourceError, evaluation_resources, job_resources
from r2i.slurm_status import install as install_slurm_state_normaliser
from r2i.smkexit import cancel_scheduler_timers, freeze_heap

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# SLURM job states as sacct prints them ("CANCELLED by 0", a preempted job that was not
# requeued) are made plain for the executor plugin, so such jobs are noticed and retried
# (r2i.slurm_status; a no-op without snakemake-executor-plugin-slurm).
if workflow.is_main_process:
    install_slurm_state_normaliser()


def _resolve_workflow_file(path):
    """A relative path that is not in the working directory is taken from the workflow's copy."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(Path(workflow.basedir) / p)


config["prompts"] = {k: _resolve_workflow_file(v) for k, v in config["prompts"].items()}

RESULTS = Path(config["results_dir"]) / config["run"]
LOGS = Path(config["results_dir"]) / "logs" / config["run"]
TOY = config["toy_world"]
SHARDS = [f"{i:03d}" for i in range(config["manifest"]["shards"])]
POOL_SIG = RESULTS / "manifest" / "pools.sig"
# content hashes of the pool files by (size, mtime), so the signature ignores mere touches
POOL_STATE = (
    Path(config["cache_dir"]) / "manifest-scan" / config["run"] / "pools.state.json"
)
SHARD_LIST = RESULTS / "manifest" / "shards" / "shard-{shard}.json"


def toy_world_index():
    """The toy world's index file when the embedded default is on, else nothing."""
    return [f"{TOY['dir']}/index.json"] if TOY["enabled"] else []


def prompt(name):
    return config["prompts"][name]


def model_params(*roles):
    """Role -> {model, max_image_pixels}: what determines a stage's model calls.

    Only what changes the requests is a param (so changing it reruns the stage); how an endpoint
    is reached (URL, launch command, concurrency, timeouts) is read from the config at run time,
    so moving a model to another server reruns nothing.
    """
    return {
        role: {k: config["models"][role][k] for k in ("model", "max_image_pixels")}
        for role in roles
    }


def shard_list(wildcards):
    """The shard's image list, known only after the manifest checkpoint has run."""
    checkpoints.manifest.get()
    return str(SHARD_LIST).format(shard=wildcards.shard)


def stage_output(stage):
    return str(RESULTS / "shards" / "{shard}" / f"{stage}.parquet")


# Refresh the signature of the image pools at parse time: it is rewritten only when a file was
# added, removed or its content changed (a touched file is not a change), which is what makes
# reruns incremental. Only files whose size or mtime changed are read (POOL_STATE).
if not TOY["enabled"] or Path(TOY["dir"], "index.json").exists():
    update_pool_signature(
        config["pools"], POOL_SIG, only_if_exists=True, state=POOL_STATE
    )


SYNTHESIS_STAGES = ["objects", "crops", "questions", "answers", "mcq", "difficulty"]
# Model roles each stage calls (the synthesize job opens those of the stages it runs).
STAGE_ROLES = {
    "objects": ["teacher"],
    "crops": [],
    "questions": ["teacher"],
    "answers": ["teacher", "teacher_b", "consensus"],
    "mcq": ["teacher"],
    "difficulty": ["student", "judge"],
}
SYNTHESIS_ROLES = ["teacher", "teacher_b", "consensus", "student", "judge"]
SYNTHESIS_PROMPTS = [
    "list_objects",
    "write_questions",
    "validate_question",
    "seed_questions",
    "answer_question",
    "consensus",
    "focus_instruction",
    "distractors",
    "mcq",
    "answer_format",
    "judge",
]


def synthesis_prompt_files():
    """The prompt templates and seed questions the synthesis stages render (inputs: editing
    one reruns the shards; the stage memo then recomputes only the stages that use it).
    """
    return [prompt(name) for name in SYNTHESIS_PROMPTS]


def stage_stats(stage):
    return str(RESULTS / "shards" / "{shard}" / f"{stage}.stats.json")


def stage_params(stage):
    """What determines a synthesis stage's rows: its settings, the models it calls, prompts.

    Each stage's part is separate, so the stage memo can tell which stages a change affects
    (e.g. the consensus ratio changes only `answers` and what follows).
    """
    return {
        "settings": config["synthesis"][stage],
        "models": model_params(*STAGE_ROLES[stage]),
        "prompts": config["prompts"],
    }


def uses_simulator():
    """True when any endpoint is the simulator (the dataset card then says so)."""
    return any(
        "r2i-sim-server" in (e.get("launch") or "")
        for e in config["endpoints"].values()
    )


def rule_resources(name, roles=(), segmenter=False, endpoints=(), own_gpus=0):
    """Resources of a rule's jobs, derived from the config by r2i.resources.

    GPUs of the endpoints the job launches (each once) plus SAM3 if it segments, the training
    geometry for `train`; CPUs, memory and time for that work. Each key is separate, so
    `--set-resources RULE:KEY=VALUE` changes one key and keeps the others. A job that needs more
    GPUs than one node has (cluster.node.gpus) fails here, saying how to change the config.
    """
    try:
        return job_resources(
            config,
            name,
            roles=roles,
            endpoints=endpoints,
            segmenter=segmenter,
            own_gpus=own_gpus,
        )
    except ResourceError as err:
        raise WorkflowError(str(err)) from None


def eval_resources(name="evaluate"):
    """Resources of the evaluation jobs: per {model}, its endpoint and the judge's."""
    try:
        return evaluation_resources(config, name)
    except ResourceError as err:
        raise WorkflowError(str(err)) from None


def stage_gpus(roles, segmenter=False):
    """GPUs a stage job needs: its launched model servers (each once) plus SAM3 if used."""
    return rule_resources("stage", roles, segmenter).get("gpu", 0)


# --- software environments (envs/, docs/cluster.md "Software"): every rule names one env by its
# conda env file (`conda: env_file(name)`, --sdm conda) and the Apptainer image built from the same
# lock (`container: env_image(name)`, --sdm apptainer). Which env a model-calling rule needs follows
# the config: a job that launches a model server other than the simulator (vLLM) or runs SAM3 gets
# the GPU env, every other job the CPU env.
ENVS_DIR = Path(workflow.basedir) / "envs"
SIMULATOR_COMMANDS = ("r2i-sim-server",)
SIMULATOR_MODULES = ("r2i.sim.server",)


def env_file(name):
    """`conda:` value of env `name` (absolute, so it resolves the same from every rule file)."""
    path = ENVS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise WorkflowError(f"software env '{name}': {path} does not exist (see envs/)")
    return str(path)


def _image(name):
    return config["software"]["container"].replace("{env}", name)


def env_image(name):
    """`container:` value of env `name`: software.container with {env} replaced.

    A function of the job (Snakemake evaluates it per job), so that under --sdm apptainer a
    local image that was not built fails before any job is submitted, saying how to build it.
    """

    def image(wildcards):
        img = _image(name)
        apptainer = (
            DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
        )
        if apptainer and "://" not in img and not Path(img).is_file():
            raise WorkflowError(
                f"Apptainer image {img} (software.container, env '{name}') does not exist: build it "
                f"from the repository root with `apptainer build {img} envs/{name}.def`, or point "
                "software.container at your images (see docs/cluster.md)."
            )
        return img

    return image


def is_simulator(command):
    """True for a launch command that starts the simulated models (no GPU software needed)."""
    words = shlex.split(command)
    if not words:
        return False
    if os.path.basename(words[0]) in SIMULATOR_COMMANDS:
        return True
    return any(a == "-m" and b in SIMULATOR_MODULES for a, b in zip(words, words[1:]))


def launches_model_server(endpoint_names):
    """True if a job using these endpoints launches a server other than the simulator."""
    endpoints = config["endpoints"]
    return any(
        "launch" in endpoints[e] and not is_simulator(endpoints[e]["launch"])
        for e in endpoint_names
        if e in endpoints
    )


def synthesis_env(roles, segmenter=False):
    """Env of a synthesis job calling `roles` (and the segmenter): gpu with vLLM/SAM3, else cpu."""
    endpoints = {config["models"][r]["endpoint"] for r in roles}
    sam3 = segmenter and config["segmenter"]["backend"] == "sam3"
    return "gpu" if sam3 or launches_model_server(endpoints) else "cpu"


def evaluation_env():
    """Env of `evaluate` jobs: gpu if any evaluated model or the judge is launched (vLLM)."""
    ev = config["evaluation"]
    endpoints = {m["endpoint"] for m in ev["models"].values()}
    if ev["judge"]:
        endpoints.add(ev["judge"]["endpoint"])
    return "gpu" if launches_model_server(endpoints) else "cpu"


def benchmark_files():
    """Every benchmark's input files (all parquet shards of a folder, glob or list)."""
    from r2i.evaluation import benchmark_files_of

    return [
        f
        for name in config["benchmarks"]
        for f in benchmark_files_of(config, name, WorkflowError)
    ]


def synthesis_targets():
    return [
        RESULTS / "dataset" / "train.parquet",
        RESULTS / "dataset" / "val.parquet",
        RESULTS / "dataset" / "funnel.json",
    ]


# --- report (rules/report.smk)
REPORT = RESULTS / "report"
STAGE_STATS = expand(
    RESULTS / "shards" / "{shard}" / "{stage}.stats.json",
    shard=SHARDS,
    stage=SYNTHESIS_STAGES,
)
STAGE_TABLES = expand(
    RESULTS / "shards" / "{shard}" / "{stage}.parquet",
    shard=SHARDS,
    stage=SYNTHESIS_STAGES,
)


def report_targets():
    """Every report item (part of `rule all`, so `snakemake --report` finds them)."""
    return [
        REPORT / "synthesis" / "funnel.svg",
        REPORT / "synthesis" / "gallery.html",
        REPORT / "synthesis" / "cost.svg",
        REPORT / "synthesis" / "cost.html",
        REPORT / "evaluation" / "accuracy.svg",
        REPORT / "evaluation" / "throughput.svg",
        REPORT / "attention" / "coverage.svg",
        REPORT / "run" / "run.html",
    ]
