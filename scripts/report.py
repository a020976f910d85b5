"""Rule scripts `report_*`: report figures, gallery, cost and run facts (r2i.report)."""

import subprocess
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.joblog import setup_logging
from r2i.report import facts, figures, gallery

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
rule = sm.rule

if rule == "report_funnel":
    figures.funnel_figure(sm.input["funnel"], sm.output[0])
elif rule == "report_gallery":
    gallery.build_gallery(sm.params["shard_dirs"], sm.output[0], n_kept=int(sm.params["n_kept"]),
                          n_dropped=int(sm.params["n_dropped"]))
elif rule == "report_cost":
    cost = facts.collect_cost(sm.input["stats"], sm.input["funnel"])
    figures.cost_figure(cost, sm.output["figure"])
    facts.write_cost(cost, sm.output["json"], sm.output["table"])
elif rule == "report_accuracy":
    figures.accuracy_figure(list(sm.input["metrics"]), sm.output[0])
elif rule == "report_throughput":
    figures.throughput_figure(list(sm.input["metrics"]), sm.output[0])
elif rule == "report_attention":
    figures.attention_figure(list(sm.input["summaries"]), list(sm.input["rows"]), sm.output[0])
elif rule == "report_run":
    try:
        git = subprocess.run(["git", "-C", str(Path(sm.scriptdir).parent), "describe", "--always",
                              "--dirty"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = ""
    facts.write_run_facts(facts.run_facts(sm.params["config"]), sm.output["json"],
                          sm.output["html"], git=git or None)
else:
    raise ValueError(f"scripts/report.py: unknown rule {rule!r}")
