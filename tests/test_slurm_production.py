"""The production config through profiles/slurm, as docs/cluster.md runs it, job by job.

`snakemake --profile profiles/slurm --configfile config/config.production.yaml site.yaml -n`:
the production config as shipped, plus a site file that only says where this machine keeps the
data (pools, benchmark, model directory, cache), because the DAG needs those paths to exist. The
dry run lists every job with its resources as Snakemake evaluated them; for each, the sbatch
call that snakemake-executor-plugin-slurm would make (its own code: partition routing,
get_submit_command, set_gres_string) is sent to the test cluster with `sbatch --test-only`, so
slurmctld itself decides whether a GPU node can give it. The test cluster's node claims the size
of an 8-GPU node for that (tests/slurm/start-cluster.sh: partitions big-cpu/big-gpu, DOWN, so
nothing runs); the partition file is this site's, given with R2I_SLURM_PARTITIONS as documented.

The dry-run checks run everywhere (no cluster needed); the sbatch checks skip without a cluster.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.slurm.harness import (
    PROFILE,
    REPO,
    DryRunJob,
    SlurmCluster,
    parse_dry_run,
    plugin_sbatch_args,
    sbatch_test_only,
    slurm_cluster_fixture,  # noqa: F401 (the `slurm_cluster` fixture)
    slurm_env,
    snakemake_exe,
)

PRODUCTION = REPO / "config" / "config.production.yaml"
BIG_PARTITIONS = REPO / "tests" / "slurm" / "partitions-big.yaml"
# everything on this machine runs within the test node; what a production job asks for is only
# checked: `--cores` lifts the local cap on threads that a dry run applies (a cluster run has none)
DRY = ("-n", "--cores", "1024")


def write_site(wd: Path) -> Path:
    """A site file: where this machine has the production config's data (paths only)."""
    prod = yaml.safe_load(PRODUCTION.read_text())
    pools = {}
    for name in prod["pools"]:
        (wd / "pools" / name).mkdir(parents=True)
        pools[name] = str(wd / "pools" / name)
    benchmarks = {}
    for name, spec in prod["benchmarks"].items():
        path = wd / "benchmarks" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # the dry run only needs it to exist
        benchmarks[name] = {**spec, "path": str(path)}
    models = {}
    for name, spec in prod["evaluation"]["attention"]["models"].items():
        if Path(spec["path"]).parts[0] == prod.get("results_dir", "results"):
            continue  # made by the workflow (e.g. a trained model): not site data
        (wd / "models" / name).mkdir(parents=True)
        models[name] = {"path": str(wd / "models" / name)}
    site = {
        "cache_dir": str(wd / "cache"),
        "pools": pools,
        "benchmarks": benchmarks,
        "evaluation": {"attention": {"models": models}},
    }
    path = wd / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def dry_run(wd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [snakemake_exe(), "-s", str(REPO / "Snakefile"), "--profile", str(PROFILE),
           "--configfile", str(PRODUCTION), str(wd / "site.yaml"), *DRY, *args]  # fmt: skip
    return subprocess.run(cmd, cwd=wd, env=slurm_env(extra=env), capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def prod_wd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = tmp_path_factory.mktemp("prod")
    write_site(wd)
    return wd


@pytest.fixture(scope="module")
def default_jobs(prod_wd: Path) -> list[DryRunJob]:
    res = dry_run(prod_wd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs = parse_dry_run(res.stdout + res.stderr)
    assert jobs, res.stdout[-3000:]
    return jobs


@pytest.fixture(scope="module")
def training_jobs(prod_wd: Path) -> list[DryRunJob]:
    """The documented training command, with one resource overridden on the command line."""
    res = dry_run(prod_wd, "training", "--set-resources", "train:runtime=4320")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return parse_dry_run(res.stdout + res.stderr)


def test_default_target_does_not_train(default_jobs: list[DryRunJob]) -> None:
    rules = Counter(j.rule for j in default_jobs)
    assert "train" not in rules and "merge" not in rules, rules
    assert rules["evaluate"] >= 1 and rules["dataset"] == 1


def test_every_job_fits_one_node(default_jobs, training_jobs) -> None:
    node = yaml.safe_load(PRODUCTION.read_text())["cluster"]["node"]
    for job in default_jobs + training_jobs:
        r = job.resources
        gpus = int(r.get("gpu", 0) or 0)
        assert gpus <= node["gpus"], job
        cpus = gpus * int(r.get("cpus_per_gpu", 0) or 0) if gpus else job.threads
        assert cpus <= node["cpus"], (str(job), dict(r))
        assert int(r["mem_mb"]) <= node["mem_mb"], (str(job), dict(r))
        assert int(r["runtime"]) >= 60, (str(job), dict(r))


def test_gpus_where_the_work_is(default_jobs: list[DryRunJob]) -> None:
    """No GPU unless the job launches a model server, runs SAM3, attention or training."""
    by_rule: dict[str, set[int]] = {}
    for j in default_jobs:
        by_rule.setdefault(j.rule, set()).add(int(j.resources.get("gpu", 0) or 0))
    gpu_rules = {rule for rule, counts in by_rule.items() if counts != {0}}
    assert {"evaluate", "attention"} <= gpu_rules, by_rule
    assert by_rule["evaluate"] == {2}, "student + judge, both launched"
    for rule in ("manifest", "dataset", "eval_metrics", "pool_signature"):
        assert by_rule[rule] == {0}, (rule, by_rule[rule])
    # synthesis: SAM3 and the launched student/judge need GPUs, the calls to the standing
    # teacher and the APIs do not; however the stages are split into rules
    shard_jobs = [j for j in default_jobs if "shard" in j.wildcards]
    shard_gpus = Counter(int(j.resources.get("gpu", 0) or 0) for j in shard_jobs)
    assert shard_gpus and max(shard_gpus) >= 1, shard_gpus


def test_command_line_override_changes_one_key(training_jobs: list[DryRunJob]) -> None:
    """--set-resources train:runtime=4320 keeps train's GPUs, CPUs, memory and --exclusive."""
    (train,) = [j for j in training_jobs if j.rule == "train"]
    r = train.resources
    assert r["runtime"] == 4320
    assert r["gpu"] == 8 and r["nodes"] == 1
    assert r["cpus_per_gpu"] >= 8
    assert r["mem_mb"] >= 400_000
    assert r["slurm_extra"] == "--exclusive"
    assert {"train", "merge"} <= {j.rule for j in training_jobs}


def test_job_wider_than_a_node_fails_when_the_dag_is_built(prod_wd: Path, tmp_path: Path) -> None:
    """The 235B teacher launched in the jobs (8 GPUs) + SAM3 and the rest do not fit 8 GPUs."""
    prod = yaml.safe_load(PRODUCTION.read_text())
    prod["endpoints"]["qwen3vl235b"] = {
        "launch": "vllm serve /models/Qwen3-VL-235B-A22B-Instruct --served-model-name "
        "qwen3-vl-235b --host 127.0.0.1 --port {port} --tensor-parallel-size 8",
        "gpus": 8,
        "startup_timeout_s": 3600,
    }
    cfg = tmp_path / "prod-launched-teacher.yaml"
    cfg.write_text(yaml.safe_dump(prod))
    cmd = [snakemake_exe(), "-s", str(REPO / "Snakefile"), "--profile", str(PROFILE),
           "--configfile", str(cfg), str(prod_wd / "site.yaml"), *DRY]  # fmt: skip
    res = subprocess.run(cmd, cwd=prod_wd, env=slurm_env(), capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "GPUs in one job, but a node has 8" in out and "cluster.node.gpus" in out, out[-3000:]
    assert "endpoint 'qwen3vl235b' (launched" in out and "SAM3" in out, out[-3000:]
    assert "endpoints.qwen3vl235b.base_url" in out, out[-3000:]
    assert "Job stats" not in out  # failed before any job was planned


# ------------------------------------------------------------------------------------------
# slurmctld's verdict (needs the test cluster)
# ------------------------------------------------------------------------------------------


def _require_big_partitions(cluster: SlurmCluster) -> None:
    if not {"big-cpu", "big-gpu"} <= set(cluster.partitions):
        pytest.skip(
            "needs the GPU-node partitions big-cpu/big-gpu of tests/slurm/start-cluster.sh "
            f"(found {cluster.partitions})"
        )


def _check_all(jobs: list[DryRunJob], account: str | None) -> dict[tuple[str, ...], list[str]]:
    calls: dict[tuple[str, ...], list[str]] = {}
    for job in jobs:
        calls.setdefault(tuple(plugin_sbatch_args(job, BIG_PARTITIONS, account)), []).append(
            str(job)
        )
    refused = {}
    for args, names in calls.items():  # identical requests are sent once
        res = sbatch_test_only(args)
        if res.returncode != 0:
            refused[" ".join(args)] = (names[:3], len(names), res.stderr.strip()[-300:])
    assert not refused, refused
    return calls


def test_slurmctld_accepts_every_production_job(
    slurm_cluster: SlurmCluster, default_jobs: list[DryRunJob]
) -> None:
    _require_big_partitions(slurm_cluster)
    calls = _check_all(default_jobs, slurm_cluster.account)
    assert sum(len(v) for v in calls.values()) == len(default_jobs)
    gpu_calls = [a for a in calls if any(x.startswith("--gpus=") for x in a)]
    assert gpu_calls and all("big-gpu" in a for a in gpu_calls), gpu_calls


def test_slurmctld_accepts_training_with_an_override(
    slurm_cluster: SlurmCluster, training_jobs: list[DryRunJob]
) -> None:
    _require_big_partitions(slurm_cluster)
    calls = _check_all(training_jobs, slurm_cluster.account)
    (train_args,) = [a for a, names in calls.items() if "train" in names]
    assert "--exclusive" in train_args and "--gpus=8" in train_args, train_args
    assert train_args[train_args.index("-t") + 1] == "4320", train_args


def test_slurmctld_refuses_more_than_a_node(slurm_cluster: SlurmCluster) -> None:
    """The check can fail: 9 GPUs on the 8-GPU test node are refused."""
    _require_big_partitions(slurm_cluster)
    res = sbatch_test_only(["-p", "big-gpu", "--gpus=9", "-t", "60"])
    assert res.returncode != 0, res.stdout + res.stderr
