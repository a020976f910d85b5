# Evaluation (spec "Evaluation"): each model x benchmark x view (full image, crop, zoom tool)
# -> per-item JSONL + the view's run facts (throughput at the stated concurrency, latency at
# concurrency 1); the views of a model x benchmark -> metrics.json (accuracy per dimension,
# zooming gap with paired bootstrap intervals, tool baseline accuracy and speed).
# Input functions and params live in r2i.evaluation.EvalWorkflow; see docs/evaluation.md.

from r2i.evaluation import EvalWorkflow

EVAL_WF = EvalWorkflow(
    config, RESULTS, resolve=_resolve_workflow_file, error=WorkflowError
)
# metrics.json of every evaluation.models x evaluation.benchmarks (for `rule all`).
evaluation_targets = EVAL_WF.targets


rule evaluate:
    input:
        benchmark=EVAL_WF.benchmark_file,
        system_prompt=EVAL_WF.system_prompt,
        judge_prompt=EVAL_WF.judge_prompt(),
    output:
        records=EVAL_WF.records(),
        run=EVAL_WF.run_info(),
    log:
        LOGS / "eval" / "{model}" / "{benchmark}" / "{view}.log",
    wildcard_constraints:
        model="[A-Za-z0-9_.-]+",
        benchmark="[A-Za-z0-9_.-]+",
        view="full|crop|tool",
    conda:
        env_file(evaluation_env())
    container:
        env_image(evaluation_env())
    resources:
        **eval_resources(),
    params:
        settings=EVAL_WF.params,
        benchmark_name=lambda wildcards: wildcards.benchmark,
        view=lambda wildcards: wildcards.view,
    script:
        "../scripts/evaluate.py"


rule eval_metrics:
    input:
        views=EVAL_WF.view_files,
        runs=EVAL_WF.run_files,
    output:
        metrics=EVAL_WF.output("metrics.json"),
        per_item=EVAL_WF.output("items.jsonl"),
    log:
        LOGS / "eval" / "{model}" / "{benchmark}" / "metrics.log",
    wildcard_constraints:
        model="[A-Za-z0-9_.-]+",
        benchmark="[A-Za-z0-9_.-]+",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    resources:
        **rule_resources("eval_metrics"),
    params:
        views=config["evaluation"]["views"],
        bootstrap=config["evaluation"]["bootstrap"],
    script:
        "../scripts/eval_metrics.py"


# A tiny, randomly initialised Qwen-VL directory (TEST DOUBLE, r2i.toy.tiny_vlm): what the
# embedded default computes attention coverage on, since no weights can be downloaded.
rule tiny_vlm:
    output:
        model=directory(f"{TOY['dir']}/models/tiny-{{kind}}"),
    log:
        LOGS / "toy" / "tiny-{kind}.log",
    wildcard_constraints:
        kind="qwen2_5_vl|qwen3_vl",
    conda:
        env_file("gpu")
    container:
        env_image("gpu")
    resources:
        **rule_resources("tiny_vlm"),
    params:
        seed=TOY["seed"],
    script:
        "../scripts/tiny_vlm.py"


# Attention coverage of a Hugging Face Qwen-VL directory on a benchmark's boxes (docs/attention.md).
rule attention:
    input:
        model=EVAL_WF.attention_model_dir,
        benchmark=EVAL_WF.benchmark_file,
    output:
        rows=EVAL_WF.attention_output("coverage.jsonl"),
        summary=EVAL_WF.attention_output("summary.json"),
        heatmaps=report(
            directory(EVAL_WF.attention_output("heatmaps")),
            patterns=["{name}.png"],
            caption="../report/heatmap.rst",
            category="3. Attention",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "heat map {name}"},
        ),
    log:
        LOGS / "attention" / "{model}" / "{benchmark}.log",
    wildcard_constraints:
        model="[A-Za-z0-9_.-]+",
        benchmark="[A-Za-z0-9_.-]+",
    conda:
        env_file("gpu")
    container:
        env_image("gpu")
    resources:
        **rule_resources(
            "attention", own_gpus=config["evaluation"]["attention"]["gpus"]
        ),
    params:
        settings=EVAL_WF.attention_params,
    script:
        "../scripts/attention.py"
