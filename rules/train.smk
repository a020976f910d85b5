# GRPO training of the student with verl (spec "Training (GRPO)") and merging of the last
# checkpoint into a Hugging Face model. Not part of `rule all`: ask for the targets, e.g.
#   snakemake --profile profiles/slurm results/<run>/train/<name>/hf
# The checkpoint dir is deliberately not an output (Snakemake would delete it before a rerun);
# verl resumes from it (trainer.resume_mode=auto). See docs/training.md.

from r2i.train.budget import effective_train_config
from r2i.train.overrides import build_overrides

# train.min_pixels/max_pixels null: the dataset's (synthesis.dataset), what the images were sized for
TRAIN = effective_train_config(config)
TRAIN_DIR = RESULTS / "train" / TRAIN["name"]
TRAIN_CKPT = Path(TRAIN["output_dir"] or TRAIN_DIR / "checkpoints")


# verl main_ppo overrides of this run (a param: changing one reruns training)
TRAIN_OVERRIDES = build_overrides(
    TRAIN,
    RESULTS / "dataset" / "train.parquet",
    RESULTS / "dataset" / "val.parquet",
    Path(workflow.basedir) / "workflow" / "r2i" / "reward.py",
    TRAIN_CKPT,
    experiment_name=f"{config['run']}-{TRAIN['name']}",
)


rule train:
    input:
        train=RESULTS / "dataset" / "train.parquet",
        val=RESULTS / "dataset" / "val.parquet",
    output:
        done=TRAIN_DIR / "train.done.json",
    log:
        LOGS / "train" / f"{TRAIN['name']}.log",
    conda:
        env_file("training")
    container:
        env_image("training")
    resources:
        **rule_resources("train"),
    params:
        overrides=TRAIN_OVERRIDES,
        # data.max_prompt_length null: derived from the dataset at run time (r2i.train.budget)
        budget={k: TRAIN[k] for k in ("max_prompt_length", "min_pixels", "max_pixels")},
        nodes=TRAIN["nodes"],
        gpus_per_node=TRAIN["gpus_per_node"],
        ckpt_dir=TRAIN_CKPT,
    script:
        "../scripts/train.py"


rule merge:
    input:
        done=TRAIN_DIR / "train.done.json",
    output:
        hf=directory(TRAIN_DIR / "hf"),
    log:
        LOGS / "train" / f"{TRAIN['name']}.merge.log",
    conda:
        env_file("training")
    container:
        env_image("training")
    resources:
        **rule_resources("merge"),
    script:
        "../scripts/merge.py"
