# Data synthesis (method stages 1-7): image pools -> manifest -> per-shard stages -> dataset.


rule toy_world:
    output:
        index=f"{TOY['dir']}/index.json",
        benchmark=f"{TOY['dir']}/benchmark/zoombench_toy.parquet",
    log:
        LOGS / "toy_world.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    resources:
        **rule_resources("toy_world"),
    params:
        seed=TOY["seed"],
        size=TOY["size"],
        short_side=TOY["short_side"],
        out_dir=lambda wildcards, output: os.path.dirname(output.index),
    script:
        "../scripts/toy_world.py"


rule pool_signature:
    input:
        toy_world_index(),
    output:
        POOL_SIG,
    log:
        LOGS / "pool_signature.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    resources:
        **rule_resources("pool_signature"),
    params:
        pools=config["pools"],
        state=POOL_STATE,
    script:
        "../scripts/pool_signature.py"


checkpoint manifest:
    input:
        sig=POOL_SIG,
    output:
        manifest=RESULTS / "manifest" / "manifest.parquet",
        summary=RESULTS / "manifest" / "summary.json",
    log:
        LOGS / "manifest.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    threads: 2
    resources:
        **rule_resources("manifest"),
    params:
        pools=config["pools"],
        settings=config["manifest"],
        shard_dir=RESULTS / "manifest" / "shards",
        # per-file verdicts by (size, mtime), kept with the call cache: deleting the results
        # does not force every image to be decoded and hashed again
        state_dir=Path(config["cache_dir"]) / "manifest-scan" / config["run"],
    script:
        "../scripts/manifest.py"


# Every model stage of a shard in one job that streams items from stage to stage
# (docs/synthesis.md): an item moves on as soon as it is done, so the model servers stay busy.
# Each stage still has its own table and stats file; each stage's settings, models and prompts
# are params/inputs, and the stage memo reuses the stages that did not change.
rule synthesize:
    input:
        shard=shard_list,
        prompts=synthesis_prompt_files(),
    output:
        objects=stage_output("objects"),
        objects_stats=stage_stats("objects"),
        crops=stage_output("crops"),
        crops_stats=stage_stats("crops"),
        questions=stage_output("questions"),
        questions_stats=stage_stats("questions"),
        answers=stage_output("answers"),
        answers_stats=stage_stats("answers"),
        mcq=stage_output("mcq"),
        mcq_stats=stage_stats("mcq"),
        difficulty=stage_output("difficulty"),
        difficulty_stats=stage_stats("difficulty"),
    log:
        LOGS / "shards" / "{shard}" / "synthesize.log",
    # before other ready jobs (the contamination index, report parts): these keep the models busy
    priority: 10
    conda:
        env_file(synthesis_env(SYNTHESIS_ROLES, segmenter=True))
    container:
        env_image(synthesis_env(SYNTHESIS_ROLES, segmenter=True))
    resources:
        **rule_resources("synthesize", SYNTHESIS_ROLES, segmenter=True),
    params:
        stages={stage: stage_params(stage) for stage in SYNTHESIS_STAGES},
        segmenter=config["segmenter"],
    script:
        "../scripts/synthesize.py"


# The contamination check's hashes (benchmark images, kept pool images): decoding-heavy, so its
# own job, which runs while the synthesis jobs wait for their models.
rule contamination_index:
    input:
        manifest=RESULTS / "manifest" / "manifest.parquet",
        benchmarks=benchmark_files(),
    output:
        RESULTS / "dataset" / "contamination-index.json",
    log:
        LOGS / "contamination_index.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    resources:
        **rule_resources("contamination_index"),
    params:
        benchmarks=config["benchmarks"],
    script:
        "../scripts/contamination_index.py"


rule dataset:
    input:
        manifest=RESULTS / "manifest" / "manifest.parquet",
        summary=RESULTS / "manifest" / "summary.json",
        stages=expand(
            RESULTS / "shards" / "{shard}" / "{stage}.parquet",
            shard=SHARDS,
            stage=SYNTHESIS_STAGES,
        ),
        benchmarks=benchmark_files(),
        index=RESULTS / "dataset" / "contamination-index.json",
        prompts=prompt("answer_format"),
    output:
        train=RESULTS / "dataset" / "train.parquet",
        val=RESULTS / "dataset" / "val.parquet",
        card=RESULTS / "dataset" / "README.md",
        funnel=RESULTS / "dataset" / "funnel.json",
        contamination=RESULTS / "dataset" / "contamination.json",
    log:
        LOGS / "dataset.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    resources:
        **rule_resources("dataset"),
    params:
        settings=config["synthesis"]["dataset"],
        shards=SHARDS,
        stages=SYNTHESIS_STAGES,
        shard_root=RESULTS / "shards",
        benchmarks=config["benchmarks"],
        prompts=config["prompts"],
        run=config["run"],
        models={role: spec["model"] for role, spec in config["models"].items()},
        simulated=uses_simulator(),
    script:
        "../scripts/dataset.py"
