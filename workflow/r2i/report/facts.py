"""Cost figures and run facts for the report: what the synthesis cost (model calls, tokens,
seconds, per kept item) and what produced the run (config, software versions, platform).

Both are rendered as small self-contained HTML pages (tables) plus JSON, so the numbers are
readable in the report and by scripts. The config is the validated run config; it holds endpoint
*names* of API-key variables, never their values, and is additionally scrubbed of any key that
looks like a secret.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import platform
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from r2i.io import atomic_write_text, read_json, write_json

__all__ = ["collect_cost", "html_page", "run_facts", "write_cost", "write_run_facts"]

STAGE_ORDER = ["objects", "crops", "questions", "answers", "mcq", "difficulty"]
VERSION_PACKAGES = ["r2i-pipeline", "snakemake", "snakemake-executor-plugin-slurm", "numpy",
                    "pyarrow", "pillow", "aiohttp", "jsonschema", "mathruler", "matplotlib",
                    "torch", "transformers", "vllm", "verl", "datasets"]
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)$", re.IGNORECASE)

_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
pre { background: #f7f7f7; padding: 0.8em; border: 1px solid #ddd; overflow-x: auto; }
"""


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page (inline style, no external resources)."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>\n"
            f"{body}\n</body></html>\n")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# --------------------------------------------------------------------------- cost


def collect_cost(stats_paths: Iterable[str | Path], funnel_json: str | Path) -> dict[str, Any]:
    """Sum the shards' ``<stage>.stats.json`` per stage; per-kept-item figures use the number of
    items in the final dataset (all splits)."""
    acc: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    job_seconds: dict[str, float] = {}  # per shard: the synthesis job's run time
    for p in stats_paths:
        st = read_json(p)
        stage = st.get("stage") or Path(p).name.split(".")[0]
        if "job_seconds" in st:
            shard = Path(p).parent.name
            job_seconds[shard] = max(job_seconds.get(shard, 0.0), float(st["job_seconds"] or 0.0))
        a = acc[stage]
        calls = st.get("calls") or {}
        a["shards"] += 1
        a["items_in"] += st.get("items_in", st.get("rows", 0)) or 0
        a["kept"] += st.get("kept", 0) or 0
        a["wall_seconds"] += st.get("seconds", 0.0) or 0.0
        for k, dst in (("calls", "calls"), ("requests_sent", "requests"),
                       ("cache_hits", "cache_hits"), ("retries", "retries"),
                       ("throttled", "throttled"), ("errors", "errors"),
                       ("prompt_tokens", "prompt_tokens"),
                       ("completion_tokens", "completion_tokens"),
                       ("total_latency_s", "model_seconds")):
            a[dst] += calls.get(k, 0) or 0
        # the original cost of calls answered from the cache (the dataset's cost, not this run's)
        for k, dst in (("cached_prompt_tokens", "prompt_tokens"),
                       ("cached_completion_tokens", "completion_tokens"),
                       ("cached_latency_s", "model_seconds")):
            a[dst] += calls.get(k, 0) or 0
    order = [s for s in STAGE_ORDER if s in acc] + sorted(set(acc) - set(STAGE_ORDER))
    stages = []
    for s in order:
        a = acc[s]
        row = {"stage": s}
        for k, v in a.items():
            row[k] = round(v, 3) if k in ("wall_seconds", "model_seconds") else int(v)
        stages.append(row)
    funnel = read_json(funnel_json)
    kept_items = sum(int(v) for v in (funnel.get("splits") or {}).values())
    totals: dict[str, Any] = {"kept_items": kept_items}
    for k in ("calls", "requests", "cache_hits", "retries", "throttled", "errors",
              "prompt_tokens", "completion_tokens", "model_seconds", "wall_seconds"):
        totals[k] = sum(s.get(k, 0) for s in stages)
    if job_seconds:
        # The stages of a shard run at once in one job: their spans overlap, so the total is the
        # jobs' run time, not the sum of the stages'.
        totals["wall_seconds"] = round(sum(job_seconds.values()), 3)
    for k, name in (("calls", "calls_per_kept_item"), ("model_seconds",
                                                        "model_seconds_per_kept_item"),
                    ("wall_seconds", "wall_seconds_per_kept_item")):
        totals[name] = totals[k] / kept_items if kept_items else None
    tokens = totals["prompt_tokens"] + totals["completion_tokens"]
    totals["tokens_per_kept_item"] = tokens / kept_items if kept_items else None
    return {"stages": stages, "totals": totals}


def write_cost(cost: Mapping[str, Any], json_out: str | Path, html_out: str | Path) -> None:
    write_json(json_out, cost)
    cols = ["stage", "shards", "items_in", "kept", "calls", "requests", "cache_hits", "retries",
            "throttled", "errors", "prompt_tokens", "completion_tokens", "model_seconds",
            "wall_seconds"]
    t = cost["totals"]
    rows = [[s.get(c, 0) for c in cols] for s in cost["stages"]]
    rows.append(["total", "", "", t["kept_items"], *[t[c] for c in cols[4:]]])

    def per(v: Any) -> str:
        return "n/a" if v is None else f"{v:,.2f}"

    body = (
        "<p>Model calls, tokens and seconds of the synthesis stages, summed over shards "
        "(<code>results/&lt;run&gt;/shards/*/&lt;stage&gt;.stats.json</code>). "
        "<i>requests</i> counts HTTP requests including retries; <i>cache_hits</i> are calls "
        "answered from the call cache (a rerun sends nothing). Tokens and <i>model_seconds</i> "
        "(summed call latencies; concurrent calls overlap) include what cached calls cost when "
        "they were made, so they describe the dataset; <i>wall_seconds</i> is, per stage, the "
        "time from its first item in to its last item out (summed over shards; the stages of a "
        "shard overlap, they stream in one job), and in the total row the synthesis jobs' run "
        "time in this run.</p>"
        + _table(cols, rows)
        + "<h3>Per kept training item</h3>"
        + _table(["kept items", "model calls", "tokens", "model seconds", "wall seconds"],
                 [[t["kept_items"], per(t["calls_per_kept_item"]),
                   per(t["tokens_per_kept_item"]), per(t["model_seconds_per_kept_item"]),
                   per(t["wall_seconds_per_kept_item"])]])
    )
    atomic_write_text(html_out, html_page("Synthesis cost", body))


# --------------------------------------------------------------------------- run facts


def _scrub(obj: Any) -> Any:
    """Drop values of keys that look like secrets (defence in depth: the config holds only the
    names of API-key environment variables, e.g. ``api_key_env``)."""
    if isinstance(obj, Mapping):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) and not str(k).endswith("_env")
                    else _scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_facts(config: Mapping[str, Any], extra_versions: Mapping[str, str] | None = None
              ) -> dict[str, Any]:
    versions = {p: v for p in VERSION_PACKAGES if (v := _version(p))}
    versions.update(extra_versions or {})
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "config": _scrub(json.loads(json.dumps(config, default=str))),
    }


def write_run_facts(facts: Mapping[str, Any], json_out: str | Path, html_out: str | Path,
                    git: str | None = None) -> None:
    write_json(json_out, facts)
    rows = [["python", facts["python"]], ["platform", facts["platform"]]]
    if git:
        rows.append(["workflow commit", git])
    rows += [[k, v] for k, v in sorted(facts["versions"].items())]
    body = (
        "<h3>Software</h3>" + _table(["component", "version"], rows)
        + "<h3>Configuration (validated, defaults filled in)</h3>"
        + f"<pre>{html.escape(yaml.safe_dump(facts['config'], sort_keys=False))}</pre>"
    )
    atomic_write_text(html_out, html_page("Run configuration and versions", body))
