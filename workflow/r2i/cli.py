"""``r2i``: a small front end for the common tasks; every command runs the Snakemake workflow.

    r2i synthesize [-- SNAKEMAKE ARGS]        # the training set only (dataset/*.parquet)
    r2i evaluate MODEL_DIR [options] [-- ...] # one model directory: dual view, tool, attention
    r2i report [--out FILE] [-- ...]          # make the report items, then snakemake --report
    r2i all [-- ...]                          # everything (= snakemake's default target)

Anything after ``--`` goes to Snakemake unchanged (``--profile profiles/slurm``, ``-c 8``,
``-n``, ``--configfile my.yaml``...); without ``-c``/``--cores``/``-j``/``--profile`` the
command adds ``--cores all``. The commands only choose targets and, for ``evaluate``, write a
small overlay config; they add no behaviour Snakemake does not have, so every run stays
incremental and resumable exactly like a plain ``snakemake`` call.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["evaluate_overlay", "main", "snakefile"]

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def snakefile() -> Path:
    """The workflow's Snakefile (the package lives in ``<repo>/workflow/r2i``)."""
    path = Path(__file__).resolve().parents[2] / "Snakefile"
    if not path.exists():
        raise SystemExit(f"r2i: cannot find the workflow's Snakefile at {path} (install the "
                         "repository with `pip install -e .`)")
    return path


def _has_cores(args: Sequence[str]) -> bool:
    flags = ("-c", "--cores", "-j", "--jobs", "--profile", "--workflow-profile")
    return any(a in flags or any(a.startswith(f + "=") for f in flags if f.startswith("--"))
               or (a.startswith(("-c", "-j")) and a[2:].isdigit()) for a in args)


def _config_files(args: Sequence[str]) -> list[str]:
    """The ``--configfile`` values in the pass-through args."""
    out: list[str] = []
    take = False
    for a in args:
        if take:
            if a.startswith("-"):
                take = False
            else:
                out.append(a)
                continue
        if a in ("--configfile", "--configfiles"):
            take = True
        elif a.startswith("--configfile="):
            out.append(a.split("=", 1)[1])
    return out


def _config_paths(files: Sequence[str], workdir: Path) -> list[str]:
    """The config files of a run: the ``--configfile`` values, else the embedded default as the
    Snakefile finds it (the working directory's ``config/config.yaml``, then the workflow's)."""
    if files:
        return list(files)
    candidates = (workdir / "config" / "config.yaml",
                  snakefile().parent / "config" / "config.yaml")
    return [str(p) for p in candidates if p.exists()][:1]


def _load_config(paths: Sequence[str]) -> dict[str, Any]:
    """The effective config (defaults filled in), merged the way Snakemake merges config files."""
    from snakemake.utils import update_config

    from r2i.config import validate_config

    cfg: dict[str, Any] = {}
    for p in paths:
        update_config(cfg, yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {})
    validate_config(cfg)
    return cfg


def run_snakemake(targets: Sequence[str], extra: Sequence[str], workdir: Path,
                  configfiles: Sequence[str] = ()) -> int:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile()), "-d", str(workdir)]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    cmd += list(extra)
    if not _has_cores(extra):
        cmd += ["--cores", "all"]
    cmd += list(targets)
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, cwd=workdir)


def evaluate_overlay(model_dir: str, name: str, *, endpoint: str | None, model: str | None,
                     gpus: int, vllm_args: str, attention: bool, benchmarks: Sequence[str] | None,
                     views: Sequence[str] | None) -> dict[str, Any]:
    """The config overlay that evaluates ``model_dir`` as ``name``.

    Without ``endpoint`` a vLLM server for the directory is launched in each evaluation job
    (``vllm serve DIR --served-model-name NAME``, on ``gpus`` GPUs); with it, the model is
    queried as ``model`` on that existing endpoint (e.g. the simulator on the toy world).
    """
    ev: dict[str, Any] = {}
    overlay: dict[str, Any] = {"evaluation": ev}
    if endpoint is None:
        endpoint = f"vllm-{name}"
        launch = (f"vllm serve {shlex.quote(str(Path(model_dir).resolve()))} --port {{port}} "
                  f"--served-model-name {name} --tensor-parallel-size {max(1, gpus)} "
                  f"{vllm_args}").strip()
        overlay["endpoints"] = {endpoint: {"launch": launch, "gpus": max(1, gpus),
                                           "startup_timeout_s": 1800, "max_concurrency": 64}}
        model = name
    ev["models"] = {name: {"endpoint": endpoint, "model": model or name}}
    if attention:
        ev["attention"] = {"models": {name: {"path": str(model_dir)}}}
    if benchmarks:
        ev["benchmarks"] = list(benchmarks)
    if views:
        ev["views"] = list(views)
    return overlay


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="r2i", description=__doc__.split("\n\n")[0],
                                 epilog="Arguments after -- go to snakemake.")
    ap.add_argument("-d", "--directory", type=Path, default=Path.cwd(),
                    help="working directory of the run (default: the current directory)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("synthesize", help="build the training set only")
    sub.add_parser("all", help="everything: synthesis, evaluation, attention, report items")
    ev = sub.add_parser("evaluate", help="evaluate one model directory (dual view, zoom tool, "
                                         "attention coverage)")
    ev.add_argument("model_dir", help="Hugging Face model directory (e.g. results/<run>/train/"
                                      "<name>/hf, built first when the workflow makes it)")
    ev.add_argument("--name", help="name in output paths (default: the directory's name)")
    ev.add_argument("--endpoint", help="query an endpoint of the config instead of launching "
                                       "vLLM for the directory")
    ev.add_argument("--model", help="model name on --endpoint (default: --name)")
    ev.add_argument("--gpus", type=int, default=1, help="GPUs of the launched vLLM server")
    ev.add_argument("--vllm-args", default="--max-model-len 32768 --limit-mm-per-prompt "
                    "'{\"image\": 4}'", help="extra `vllm serve` arguments")
    ev.add_argument("--benchmark", action="append", help="benchmark name (repeatable; default: "
                                                         "evaluation.benchmarks)")
    ev.add_argument("--view", action="append", choices=["full", "crop", "tool"],
                    help="view (repeatable; default: evaluation.views)")
    ev.add_argument("--no-attention", action="store_true", help="skip attention coverage")
    rp = sub.add_parser("report", help="make the report items, then the HTML report")
    rp.add_argument("--out", type=Path, help="report file (default: <results_dir>/<run>/"
                                             "report.html; .zip for a zipped report)")
    args = ap.parse_args(argv)
    workdir = args.directory.resolve()
    configfiles = _config_files(extra)
    base = _config_paths(configfiles, workdir)
    cfg = _load_config(base)
    results = Path(cfg["results_dir"]) / cfg["run"]

    if args.command == "synthesize":
        return run_snakemake(["synthesis"], extra, workdir)
    if args.command == "all":
        return run_snakemake(["all"], extra, workdir)
    if args.command == "report":
        rc = run_snakemake(["all"], extra, workdir)
        if rc != 0:
            return rc
        out = args.out or results / "report.html"
        rest = [a for a in extra if a not in ("-n", "--dry-run", "--dryrun")]
        return run_snakemake([], [*rest, "--report", str(out)], workdir)
    # evaluate
    name = args.name or Path(args.model_dir).name
    if not set(name) <= _NAME_OK:
        raise SystemExit(f"r2i evaluate: name {name!r} may only use letters, digits, '_', '.', "
                         "'-' (give --name)")
    if args.endpoint and args.endpoint not in cfg["endpoints"]:
        raise SystemExit(f"r2i evaluate: endpoint {args.endpoint!r} is not in the config "
                         f"(defined: {', '.join(sorted(cfg['endpoints']))})")
    overlay = evaluate_overlay(args.model_dir, name, endpoint=args.endpoint, model=args.model,
                               gpus=args.gpus, vllm_args=args.vllm_args,
                               attention=not args.no_attention, benchmarks=args.benchmark,
                               views=args.view)
    overlay_dir = workdir / ".r2i"
    overlay_dir.mkdir(exist_ok=True)
    overlay_path = overlay_dir / f"evaluate-{name}.yaml"
    overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False), encoding="utf-8")
    from snakemake.utils import update_config

    merged = copy.deepcopy(cfg)
    update_config(merged, overlay)
    benches = merged["evaluation"]["benchmarks"]
    targets = [str(results / "eval" / name / b / "metrics.json") for b in benches]
    if not args.no_attention:
        att_b = merged["evaluation"]["attention"].get("benchmarks") or benches
        targets += [str(results / "attention" / name / b / "summary.json") for b in att_b]
    rest = [a for a in extra if a not in base and a not in ("--configfile", "--configfiles")]
    return run_snakemake(targets, rest, workdir, configfiles=[*base, str(overlay_path)])


if __name__ == "__main__":
    raise SystemExit(main())
