# The run report (`snakemake --report report.html`): figures, the example gallery, cost and run
# facts, each a report item with a caption (report/*.rst) and a category per stage. The rules only
# read finished results, so `snakemake --report` after a run never calls a model.
# The computation lives in r2i.report; see docs/report.md.


# cheap, read-only jobs: never worth a cluster submission
localrules:
    report_funnel,
    report_gallery,
    report_cost,
    report_accuracy,
    report_throughput,
    report_attention,
    report_run,


rule report_funnel:
    input:
        funnel=RESULTS / "dataset" / "funnel.json",
    output:
        report(
            REPORT / "synthesis" / "funnel.svg",
            caption="../report/funnel.rst",
            category="1. Synthesis",
            labels={"figure": "1. funnel"},
        ),
    log:
        LOGS / "report" / "funnel.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    script:
        "../scripts/report.py"


rule report_gallery:
    input:
        tables=STAGE_TABLES,
    output:
        report(
            REPORT / "synthesis" / "gallery.html",
            caption="../report/gallery.rst",
            category="1. Synthesis",
            labels={"figure": "2. examples (kept and dropped)"},
        ),
    log:
        LOGS / "report" / "gallery.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    params:
        shard_dirs=expand(RESULTS / "shards" / "{shard}", shard=SHARDS),
        n_kept=config["report"]["gallery"]["kept"],
        n_dropped=config["report"]["gallery"]["dropped"],
    script:
        "../scripts/report.py"


rule report_cost:
    input:
        stats=STAGE_STATS,
        funnel=RESULTS / "dataset" / "funnel.json",
    output:
        figure=report(
            REPORT / "synthesis" / "cost.svg",
            caption="../report/cost.rst",
            category="1. Synthesis",
            labels={"figure": "3. cost per stage"},
        ),
        table=report(
            REPORT / "synthesis" / "cost.html",
            caption="../report/cost.rst",
            category="1. Synthesis",
            labels={"figure": "4. cost table"},
        ),
        json=REPORT / "synthesis" / "cost.json",
    log:
        LOGS / "report" / "cost.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    script:
        "../scripts/report.py"


rule report_accuracy:
    input:
        metrics=EVAL_WF.metrics_files(),
    output:
        report(
            REPORT / "evaluation" / "accuracy.svg",
            caption="../report/accuracy.rst",
            category="2. Evaluation",
            labels={"figure": "1. accuracy and zooming gap"},
        ),
    log:
        LOGS / "report" / "accuracy.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    script:
        "../scripts/report.py"


rule report_throughput:
    input:
        metrics=EVAL_WF.metrics_files(),
    output:
        report(
            REPORT / "evaluation" / "throughput.svg",
            caption="../report/throughput.rst",
            category="2. Evaluation",
            labels={"figure": "2. accuracy vs samples/s"},
        ),
    log:
        LOGS / "report" / "throughput.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    script:
        "../scripts/report.py"


rule report_attention:
    input:
        summaries=EVAL_WF.attention_targets(),
        rows=EVAL_WF.attention_files("coverage.jsonl"),
    output:
        report(
            REPORT / "attention" / "coverage.svg",
            caption="../report/attention.rst",
            category="3. Attention",
            subcategory="coverage (all models)",
            labels={"figure": "coverage distribution"},
        ),
    log:
        LOGS / "report" / "attention.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    script:
        "../scripts/report.py"


rule report_run:
    output:
        html=report(
            REPORT / "run" / "run.html",
            caption="../report/run.rst",
            category="4. Run",
            labels={"figure": "config and versions"},
        ),
        json=REPORT / "run" / "run.json",
    log:
        LOGS / "report" / "run.log",
    conda:
        env_file("cpu")
    container:
        env_image("cpu")
    params:
        # the validated config (a param: a config change refreshes this page)
        config=config,
    script:
        "../scripts/report.py"
