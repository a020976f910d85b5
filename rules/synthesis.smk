# Data synthesis (method stages 1-7): image pools -> manifest -> per-shard stages -> dataset.


rule toy_world:
    output:
        index=f"{TOY['dir']}/index.json",
        benchmark=f"{TOY['dir']}/benchmark/zoombench_toy.parquet",
    log:
        LOGS / "toy_world.log",
    conda:
        "../envs/cpu-synthesis.yaml"
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
        "../envs/cpu-synthesis.yaml"
    resources:
        **rule_resources("pool_signature"),
    params:
        pools=config["pools"],
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
        "../envs/cpu-synthesis.yaml"
    threads: 2
    resources:
        **rule_resources("manifest"),
    params:
        pools=config["pools"],
        settings=config["manifest"],
        shard_dir=RESULTS / "manifest" / "shards",
        state_dir=RESULTS / "manifest" / "state",
    script:
        "../scripts/manifest.py"


rule objects:
    input:
        shard=shard_list,
        prompts=prompt("list_objects"),
    output:
        table=stage_output("objects"),
        stats=stage_output("objects").replace(".parquet", ".stats.json"),
    log:
        LOGS / "shards" / "{shard}" / "objects.log",
    conda:
        "../envs/cpu-synthesis.yaml"
    resources:
        **rule_resources("objects", ["teacher"], segmenter=True),
    params:
        **stage_params("objects", ["teacher"]),
        segmenter=config["segmenter"],
    script:
        "../scripts/synth_stage.py"


rule crops:
    input:
        objects=stage_output("objects"),
    output:
        table=stage_output("crops"),
        stats=stage_output("crops").replace(".parquet", ".stats.json"),
    log:
        LOGS / "shards" / "{shard}" / "crops.log",
    conda:
        "../envs/cpu-synthesis.yaml"
    resources:
        **rule_resources("crops"),
    params:
        **stage_params("crops", []),
    script:
        "../scripts/synth_stage.py"


rule questions:
    input:
        crops=stage_output("crops"),
        prompts=[prompt("write_questions"), prompt("validate_question")],
        seeds=prompt("seed_questions"),
    output:
        table=stage_output("questions"),
        stats=stage_output("questions").replace(".parquet", ".stats.json"),
    log:
        LOGS / "shards" / "{shard}" / "questions.log",
    conda:
        "../envs/cpu-synthesis.yaml"
    resources:
        **rule_resources("questions", ["teacher"]),
    params:
        **stage_params("questions", ["teacher"]),
    script:
        "../scripts/synth_stage.py"


rule answers:
    input:
        questions=stage_output("questions"),
        crops=stage_output("crops"),
        prompts=[prompt("answer_question"), prompt("consensus")],
    output:
        table=stage_output("answers"),
        stats=stage_output("answers").replace(".parquet", ".stats.json"),
    log:
        LOGS / "shards" / "{shard}" / "answers.log",
    conda:
        "../envs/cpu-synthesis.yaml"
    resources:
        **rule_resources("answers", ["teacher", "teacher_b", "consensus"]),
    params:
        **stage_params("answers", ["teacher", "teacher_b", "consensus"]),
    script:
        "../scripts/synth_stage.py"


rule mcq:
    input:
        answers=stage_output("answers"),
        prompts=[prompt("focus_instruction"), prompt("distractors"), prompt("mcq")],
    output:
        table=stage_output("mcq"),
        stats=stage_output("mcq").replace(".parquet", ".stats.json"),
    log:
        LOGS / "shards" / "{shard}" / "mcq.log",
    conda:
        "../envs/cpu-synthesis.yaml"
    resources:
        **rule_resources("mcq", ["teacher"]),
    params:
        **stage_params("mcq", ["teacher"]),
    script:
        "../scripts/synth_stage.py"


rule difficulty:
    input:
        mcq=stage_output("mcq"),
        prompts=[prompt("answer_format"), prompt("judge")],
    output:
        table=stage_output("difficulty"),
        stats=stage_output("difficulty").replace(".parquet", ".stats.json"),
    log:
        LOGS / "shards" / "{shard}" / "difficulty.log",
    conda:
        "../envs/cpu-synthesis.yaml"
    resources:
        **rule_resources("difficulty", ["student", "judge"]),
    params:
        **stage_params("difficulty", ["student", "judge"]),
    script:
        "../scripts/synth_stage.py"


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
        "../envs/cpu-synthesis.yaml"
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
