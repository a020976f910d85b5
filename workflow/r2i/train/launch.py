"""Launch verl GRPO training: GPU check, single-node command, multi-node Ray-on-SLURM script.

Pure functions generate what runs, so tests can check the exact lines; ``scripts/train.py``
executes them. CLI (prints, runs nothing)::

    python -m r2i.train.launch --dry-run [--configfile config/config.yaml] [--nodes 2]

Multi-node (``nodes > 1``, inside a SLURM allocation): the batch script runs on the first
allocated node; it starts the Ray head there, one Ray worker per other node through ``srun``
(``--overlap``: the Snakemake job itself may already be a job step holding the allocation),
waits until all ``nodes * gpus_per_node`` GPUs have registered, then runs ``main_ppo`` on the head
(it connects to the running cluster through ``RAY_ADDRESS``). Ray is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MAIN_PPO = ("-m", "verl.trainer.main_ppo")
RAY_PORT = 6379


class NoGPUError(RuntimeError):
    """Training was started where no usable GPU is visible."""


def check_gpus(
    needed: int,
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    cuda_count: Callable[[], int] | None = None,
) -> int:
    """Fail at once (:class:`NoGPUError`) unless ``needed`` GPUs are usable; return the count.

    Checked in order: ``CUDA_VISIBLE_DEVICES`` set but empty (or ``-1``/``NoDevFiles``),
    ``nvidia-smi`` not on ``PATH``, torch not importable, fewer CUDA devices than ``needed``.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in {"", "-1", "NoDevFiles"}:
        raise NoGPUError(
            f"training needs {needed} GPU(s) but CUDA_VISIBLE_DEVICES={visible!r} hides all GPUs; "
            "run the train rule on a GPU node (snakemake --profile profiles/slurm ...)"
        )
    if which("nvidia-smi") is None:
        raise NoGPUError(
            f"training needs {needed} GPU(s) but nvidia-smi is not on PATH (no NVIDIA driver here); "
            "run the train rule on a GPU node (snakemake --profile profiles/slurm ...)"
        )
    if cuda_count is None:
        try:
            import torch  # type: ignore[import-not-found]
        except ImportError as err:
            raise NoGPUError(
                f"training needs torch with CUDA, which is not installed ({err}); "
                "use the training environment (envs/training.yaml, --sdm conda)"
            ) from None
        cuda_count = torch.cuda.device_count
    count = int(cuda_count())
    if count < needed:
        raise NoGPUError(f"training needs {needed} GPU(s) per node but {count} are visible")
    return count


def single_node_command(overrides: Sequence[str], python: str = "python") -> list[str]:
    """argv of a single-node run: ``python -m verl.trainer.main_ppo <overrides>``."""
    return [python, *MAIN_PPO, *overrides]


def _set_geometry(overrides: Sequence[str], nodes: int, gpus_per_node: int) -> list[str]:
    """Overrides with ``trainer.nnodes``/``trainer.n_gpus_per_node`` set to the geometry."""
    fixed = {"trainer.nnodes": str(nodes), "trainer.n_gpus_per_node": str(gpus_per_node)}
    out = [o for o in overrides if o.split("=", 1)[0] not in fixed]
    return out + [f"{k}={v}" for k, v in fixed.items()]


def multinode_script(
    overrides: Sequence[str],
    nodes: int,
    gpus_per_node: int,
    python: str = "python",
    port: int = RAY_PORT,
    register_timeout_s: int = 600,
) -> str:
    """Bash script for a ``nodes``-node run inside a SLURM allocation (see the module doc)."""
    if nodes < 2:
        raise ValueError("multinode_script needs nodes >= 2; use single_node_command")
    total = nodes * gpus_per_node
    trainer = shlex.join(single_node_command(_set_geometry(overrides, nodes, gpus_per_node), python))
    py = shlex.quote(python)
    return "\n".join(
        [
            "#!/usr/bin/env bash",
            "set -euo pipefail",
            'mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            f'if [ "${{#nodes[@]}}" -lt {nodes} ]; then echo "need {nodes} nodes, allocation has ${{#nodes[@]}}" >&2; exit 1; fi',
            'head="${nodes[0]}"',
            '[ "$(hostname -s)" = "${head%%.*}" ] || echo "warning: expected to run on the first node $head" >&2',
            'head_ip="$(hostname --ip-address | awk \'{print $1}\')"',
            f'address="$head_ip:{port}"',
            "trap 'ray stop --force >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true' EXIT",
            f'ray start --head --node-ip-address="$head_ip" --port={port} --num-gpus={gpus_per_node} --disable-usage-stats',
            f'for node in "${{nodes[@]:1:{nodes - 1}}}"; do',
            f'  srun --overlap --nodes=1 --ntasks=1 -w "$node" ray start --address "$address" --num-gpus={gpus_per_node} --block &',
            "done",
            f'{py} -m r2i.train.launch --wait-gpus {total} --address "$address" --timeout {register_timeout_s}',
            'export RAY_ADDRESS="$address"',
            trainer,
            "",
        ]
    )


def wait_for_gpus(address: str, expected: int, timeout_s: float = 600, poll_s: float = 5) -> int:
    """Block until the Ray cluster at ``address`` has ``expected`` GPUs; return the count."""
    import ray  # type: ignore[import-not-found]

    ray.init(address=address, logging_level="ERROR")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            have = int(ray.cluster_resources().get("GPU", 0))
            if have >= expected:
                print(f"ray: {have} GPUs registered", flush=True)
                return have
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {have} of {expected} GPUs registered with Ray after {timeout_s} s")
            time.sleep(poll_s)
    finally:
        ray.shutdown()


def plan(overrides: Sequence[str], nodes: int, gpus_per_node: int, python: str = "python") -> str:
    """What a run would execute, as shell text (single command or the multi-node script)."""
    if nodes == 1:
        return shlex.join(single_node_command(overrides, python)) + "\n"
    return multinode_script(overrides, nodes, gpus_per_node, python)


def _overrides_from_config(configfile: str, nodes: int | None) -> tuple[list[str], dict[str, Any]]:
    from pathlib import Path

    from r2i.config import load_config
    from r2i.train.budget import effective_train_config
    from r2i.train.overrides import build_overrides

    cfg = load_config(configfile)
    train = effective_train_config(cfg)
    if nodes is not None:
        train["nodes"] = nodes
    results = Path(cfg["results_dir"]) / cfg["run"]
    out = Path(train["output_dir"] or results / "train" / train["name"] / "checkpoints")
    reward = Path(__file__).resolve().parents[1] / "reward.py"
    data = [results / "dataset" / "train.parquet", results / "dataset" / "val.parquet"]
    ov = build_overrides(train, data[0], data[1], reward, out,
                         experiment_name=f"{cfg['run']}-{train['name']}")
    if train.get("max_prompt_length") is None:
        if all(p.exists() for p in data):
            from r2i.train.overrides import prompt_length_override

            ov += prompt_length_override(train, data)
        else:
            ov.append("data.max_prompt_length=<derived from the dataset by the train rule>")
    return ov, train


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``--dry-run`` prints the plan for a config; ``--wait-gpus`` is used by the script."""
    p = argparse.ArgumentParser(prog="python -m r2i.train.launch", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print what a run would execute")
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--nodes", type=int, default=None, help="override train.nodes")
    p.add_argument("--wait-gpus", type=int, default=None, metavar="N", help="wait for N GPUs in Ray")
    p.add_argument("--address", default=None, help="Ray address for --wait-gpus")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args(argv)
    if args.wait_gpus is not None:
        wait_for_gpus(args.address, args.wait_gpus, args.timeout)
        return 0
    if not args.dry_run:
        p.error("nothing to do: give --dry-run (runs happen through the train rule)")
    ov, train = _overrides_from_config(args.configfile, args.nodes)
    sys.stdout.write(plan(ov, train["nodes"], train["gpus_per_node"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
