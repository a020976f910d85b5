"""What Snakemake itself makes of the rules' software directives, as JSON (for tests/test_envs.py).

Run as a separate process (Snakemake's API changes the working directory and global logging):

    python tests/envs_probe.py WORKDIR [--configfile FILE] [--sdm conda apptainer] [--rules-only]

Loads the repository's Snakefile with Snakemake's API in WORKDIR and prints, for every rule, the
conda env file as Snakemake resolves it (and where ``--sdm conda`` copies it before conda reads it),
the container image as Snakemake expands it, the script and the params that say which model roles
and segmenter a job uses; then builds the DAG (no job runs) and prints the same for every job in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from snakemake.api import SnakemakeApi
from snakemake.iocontainers import Wildcards
from snakemake.settings.types import (
    ConfigSettings,
    DAGSettings,
    DeploymentMethod,
    DeploymentSettings,
    OutputSettings,
    Quietness,
    ResourceSettings,
)

REPO = Path(__file__).resolve().parents[1]


def _plain(value: Any) -> Any:
    """JSON-able copy of a param value (callables are reported as such)."""
    if callable(value):
        return "<function>"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _params(params: Any) -> dict[str, Any]:
    return {name: _plain(params[name]) for name in params.keys()}  # noqa: SIM118 (a Namedlist, not a dict)


def _conda(workflow: Any, spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    post_deploy = spec.get_conda_env(workflow).post_deploy_file
    return {
        "file": spec.file.get_path_or_uri(secret_free=True),
        # the script Snakemake runs in the new env after creating it (<env>.post-deploy.sh)
        "post_deploy": post_deploy.get_path_or_uri(secret_free=True) if post_deploy else None,
        # --sdm conda copies the env file into this folder (as <hash>.yaml, next to the env's
        # prefix <hash>/) and conda runs the pip section from there
        "copied_to_dir": workflow.persistence.conda_env_path,
    }


def probe(workdir: Path, configfiles: list[Path], sdm: list[str], dag: bool = True) -> dict[str, Any]:
    methods = {DeploymentMethod.parse_choice(m) for m in sdm}
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=configfiles),
            deployment_settings=DeploymentSettings(deployment_method=methods),
            snakefile=REPO / "Snakefile",
            workdir=workdir,
        )
        dag_api = wf_api.dag(DAGSettings())
        workflow = wf_api._workflow  # the loaded workflow (rules, settings)
        # persistence (.snakemake/, where conda envs go), as for any run; nothing is executed
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        rules = {}
        for rule in workflow.rules:
            wc = Wildcards()
            rules[rule.name] = {
                "norun": bool(rule.norun),
                "script": rule.script,
                "conda": None if rule.conda_env is None else _conda(workflow, rule.expand_conda_env(wc)),
                "container": None if rule.container_img is None else rule.expand_container_img(wc),
                "params": _params(rule.params),
            }
        if not dag:
            return {"config": workflow.config, "rules": rules, "jobs": []}
        # the DAG as far as it is known before any job ran (jobs behind checkpoints are not)
        workflow._build_dag()
        jobs = [
            {
                "rule": job.rule.name,
                "wildcards": dict(job.wildcards_dict),
                "conda": _conda(workflow, job.conda_env_spec),
                "container": job.container_img_url,
                "params": _params(job.params),
            }
            for job in workflow.dag.jobs
        ]
        del dag_api
        return {"config": workflow.config, "rules": rules, "jobs": jobs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--configfile", type=Path, action="append", default=[])
    parser.add_argument("--sdm", nargs="*", default=["conda", "apptainer"])
    parser.add_argument("--rules-only", action="store_true",
                        help="do not build the DAG (for configs whose input files are elsewhere)")
    args = parser.parse_args()
    out = probe(args.workdir.resolve(), [p.resolve() for p in args.configfile], args.sdm,
                dag=not args.rules_only)
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
