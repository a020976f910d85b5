"""Cluster resources of each job, derived from the config (the rules' ``resources:``).

Why here and not in the SLURM profile: Snakemake replaces a profile's whole ``set-resources``
block when ``--set-resources`` is given on the command line, so a profile that sized the GPU
rules lost all of it on the first override (``--set-resources train:runtime=4320`` dropped
``train`` to the CPU defaults). Resources computed in the rules are per key: an override on the
command line changes that one key and leaves the others. And they follow the work: a job asks
for the GPUs of the model servers it launches (``endpoints.<name>.launch`` + ``gpus``), one more
for SAM3 when it segments in-process, the training geometry for ``train``, and no GPU at all when
it only talks to ``base_url`` endpoints or the simulator.

Resource names are those of ``snakemake-executor-plugin-slurm`` (``gpu``, ``cpus_per_gpu``,
``gpu_model``, ``mem_mb``, ``runtime`` in minutes, ``nodes``, ``slurm_extra``); a local run
(``snakemake -c N``) ignores them unless limited with ``--resources gpu=N``.

A job runs on one node (only ``train`` spans several), so a job that would need more GPUs than a
node has (``cluster.node.gpus``) fails when the DAG is built, with a message that says which
endpoints add up and how to change the config, instead of being refused by ``sbatch`` (or routed
to a CPU partition) hours into a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GPU_WORK",
    "JOB_KINDS",
    "SAM3_GPUS",
    "GpuUse",
    "JobKind",
    "JobNeeds",
    "ResourceError",
    "evaluation_resources",
    "job_needs",
    "job_resources",
]

SAM3_GPUS = 1  # SAM3 runs in the job's own process on one GPU


class ResourceError(ValueError):
    """A job needs more than a node can give; the message says how to change the config."""


@dataclass(frozen=True)
class GpuWork:
    """Host CPUs and memory that one GPU's worth of a kind of work needs besides the GPU."""

    cpus_per_gpu: int
    mem_mb_per_gpu: int


# Sizing per GPU. vLLM: tokenizer/detokenizer and image preprocessing threads, and host memory
# to stage the weights (a 235B model in bf16 is ~470 GB over 8 GPUs) plus its CPU swap space.
# SAM3: image decoding and batching on the CPU, the checkpoint and masks in host memory.
# verl: FSDP with parameter/optimizer offload and the Ray workers keep a copy of the model and
# rollouts in host memory, and dataloader workers per GPU.
GPU_WORK: dict[str, GpuWork] = {
    "vllm": GpuWork(cpus_per_gpu=8, mem_mb_per_gpu=64_000),
    "sam3": GpuWork(cpus_per_gpu=8, mem_mb_per_gpu=32_000),
    "verl": GpuWork(cpus_per_gpu=12, mem_mb_per_gpu=120_000),
    "hf": GpuWork(cpus_per_gpu=8, mem_mb_per_gpu=64_000),
}


@dataclass(frozen=True)
class JobKind:
    """The job's own (CPU side) work: host memory, wall time, and memory per request in flight.

    ``mem_mb_per_request``: a request in flight holds an encoded image (up to ~16 MP as PNG) and
    its base64 copy, so a client job with many requests in flight needs memory in proportion.
    """

    mem_mb: int
    runtime: int  # minutes, before the start-up time of launched servers is added
    mem_mb_per_request: int = 0
    gpu_work: str = "hf"  # kind of the job's own GPU work (``own_gpus``)
    exclusive: bool = False  # whole nodes (`--exclusive`)


JOB_KINDS: dict[str, JobKind] = {
    # a per-shard synthesis stage: model client, image work, SAM3 in-process
    "synthesis": JobKind(mem_mb=4_000, runtime=720, mem_mb_per_request=32),
    # every stage of a shard in one job
    "synthesize": JobKind(mem_mb=4_000, runtime=1_440, mem_mb_per_request=32),
    "evaluate": JobKind(mem_mb=4_000, runtime=480, mem_mb_per_request=32),
    "attention": JobKind(mem_mb=4_000, runtime=240, gpu_work="hf"),
    "train": JobKind(mem_mb=0, runtime=2_880, gpu_work="verl", exclusive=True),
    # verl's model merger loads the FSDP shards on the CPU (no GPU) and writes the HF model
    "merge": JobKind(mem_mb=128_000, runtime=240),
    "manifest": JobKind(mem_mb=8_000, runtime=720),
    "cpu": JobKind(mem_mb=4_000, runtime=120),
}

# rule name -> job kind; rules not listed are "cpu"
RULE_KINDS: dict[str, str] = {
    **{r: "synthesis" for r in ("objects", "crops", "questions", "answers", "mcq", "difficulty")},
    "synthesize": "synthesize",
    "evaluate": "evaluate",
    "attention": "attention",
    "train": "train",
    "merge": "merge",
    "manifest": "manifest",
}

MAX_REQUESTS_IN_FLIGHT_MEMORY = 512  # cap of the per-request memory term


@dataclass(frozen=True)
class GpuUse:
    """One contribution to a job's GPUs (for the numbers and for the error message)."""

    what: str  # e.g. "endpoint 'qwen3vl235b' (launched; roles teacher)"
    gpus: int
    work: str  # key of GPU_WORK
    fix: str = ""  # how to need fewer GPUs for this part


@dataclass(frozen=True)
class JobNeeds:
    """What one job needs, before it is turned into resource values."""

    rule: str
    kind: JobKind
    uses: tuple[GpuUse, ...] = ()
    requests_in_flight: int = 0
    startup_minutes: int = 0
    nodes: int = 1

    @property
    def gpus(self) -> int:
        """GPUs per node of the job."""
        return sum(u.gpus for u in self.uses)


def _node(config: Mapping[str, Any]) -> Mapping[str, Any]:
    cluster = config.get("cluster") or {}
    return cluster.get("node") or {"gpus": 8, "cpus": 96, "mem_mb": 1_000_000}


def _endpoint_uses(
    config: Mapping[str, Any], roles: Iterable[str], endpoints: Iterable[str]
) -> tuple[list[GpuUse], int, int]:
    """GPU uses of the launched endpoints (each once), requests in flight, start-up minutes."""
    eps = config.get("endpoints") or {}
    models = config.get("models") or {}
    users: dict[str, list[str]] = {}
    for role in roles:
        users.setdefault(models[role]["endpoint"], []).append(role)
    for name in endpoints:
        users.setdefault(name, [])
    uses, in_flight, startup_s = [], 0, 0.0
    for name in sorted(users):
        spec = eps.get(name)
        if spec is None:  # reported by config validation, with the key
            continue
        in_flight += int(spec.get("max_concurrency", 16))
        if "launch" not in spec:
            continue  # a running server (base_url): no GPU in this job
        startup_s += float(spec.get("startup_timeout_s", 900))
        gpus = int(spec.get("gpus", 0))
        if gpus <= 0:
            continue
        who = f"; roles {', '.join(users[name])}" if users[name] else ""
        uses.append(
            GpuUse(
                what=f"endpoint '{name}' (launched, endpoints.{name}.gpus: {gpus}{who})",
                gpus=gpus,
                work="vllm",
                fix=(
                    f"run '{name}' as a standing server (one SLURM job, docs/cluster.md "
                    f"'A standing server') and give endpoints.{name}.base_url instead of launch"
                ),
            )
        )
    return uses, in_flight, math.ceil(startup_s / 60)


def job_needs(
    config: Mapping[str, Any],
    rule: str,
    *,
    roles: Iterable[str] = (),
    endpoints: Iterable[str] = (),
    segmenter: bool = False,
    own_gpus: int = 0,
    kind: str | None = None,
) -> JobNeeds:
    """What a job of ``rule`` needs.

    ``roles``: model roles the job calls (``models.<role>``); ``endpoints``: further endpoint
    names it calls (evaluation models, judge); ``segmenter``: it runs the configured segmenter
    in-process (SAM3 takes a GPU); ``own_gpus``: GPUs of the job's own work (attention);
    ``kind``: a key of :data:`JOB_KINDS` (default: from the rule name).
    """
    job_kind = JOB_KINDS[kind or RULE_KINDS.get(rule, "cpu")]
    uses, in_flight, startup = _endpoint_uses(config, roles, endpoints)
    if segmenter and (config.get("segmenter") or {}).get("backend") == "sam3":
        uses.append(
            GpuUse(
                what=f"SAM3 segmenter (segmenter.backend: sam3, {SAM3_GPUS} GPU)",
                gpus=SAM3_GPUS,
                work="sam3",
            )
        )
    nodes = 1
    if rule == "train" or kind == "train":
        train = config.get("train") or {}
        nodes = int(train.get("nodes", 1))
        uses.append(
            GpuUse(
                what=f"verl training (train.gpus_per_node: {train.get('gpus_per_node', 8)} "
                f"on each of train.nodes: {nodes})",
                gpus=int(train.get("gpus_per_node", 8)),
                work="verl",
                fix="use more nodes with fewer GPUs each (train.nodes, train.gpus_per_node)",
            )
        )
    elif own_gpus > 0:
        uses.append(
            GpuUse(
                what=f"the job's own work ({own_gpus} GPU)", gpus=own_gpus, work=job_kind.gpu_work
            )
        )
    return JobNeeds(
        rule=rule,
        kind=job_kind,
        uses=tuple(uses),
        requests_in_flight=in_flight,
        startup_minutes=startup,
        nodes=nodes,
    )


def check_needs(config: Mapping[str, Any], needs: JobNeeds) -> None:
    """Raise :class:`ResourceError` when the job needs more GPUs than one node has."""
    node_gpus = int(_node(config)["gpus"])
    if needs.gpus <= node_gpus:
        return
    uses = sorted(needs.uses, key=lambda u: -u.gpus)
    parts = "\n".join(f"    {u.gpus:>3}  {u.what}" for u in uses)
    # the fewest parts to move out of the job (largest first) that make it fit
    fixes, left = [], needs.gpus
    for u in uses:
        if left <= node_gpus:
            break
        if u.fix:
            fixes.append(f"  - {u.fix}")
            left -= u.gpus
    fixes.append("  - or, if your nodes have more GPUs, set cluster.node.gpus")
    raise ResourceError(
        f"rule '{needs.rule}' needs {needs.gpus} GPUs in one job, but a node has {node_gpus} "
        f"(cluster.node.gpus) and a job runs on one node:\n{parts}\n"
        f"Change the config so that the job needs at most {node_gpus} GPUs:\n" + "\n".join(fixes)
    )


def resources_of(config: Mapping[str, Any], needs: JobNeeds) -> dict[str, Any]:
    """Turn :class:`JobNeeds` into plugin resource values (checked against the node first)."""
    check_needs(config, needs)
    node = _node(config)
    kind = needs.kind
    requests = min(needs.requests_in_flight, MAX_REQUESTS_IN_FLIGHT_MEMORY)
    mem = kind.mem_mb + kind.mem_mb_per_request * requests
    out: dict[str, Any] = {}
    gpus = needs.gpus
    if gpus > 0:
        cpus = sum(GPU_WORK[u.work].cpus_per_gpu * u.gpus for u in needs.uses)
        mem += sum(GPU_WORK[u.work].mem_mb_per_gpu * u.gpus for u in needs.uses)
        out["gpu"] = gpus
        # whole CPUs per GPU, never more than the node has
        out["cpus_per_gpu"] = max(1, min(math.ceil(cpus / gpus), int(node["cpus"]) // gpus))
        gpu_model = (config.get("cluster") or {}).get("gpu_model")
        if gpu_model:
            out["gpu_model"] = str(gpu_model)
    out["mem_mb"] = int(min(max(mem, 1_000), int(node["mem_mb"])))
    out["runtime"] = kind.runtime + needs.startup_minutes
    if needs.nodes > 1 or kind.exclusive:
        out["nodes"] = needs.nodes
    if kind.exclusive:
        out["slurm_extra"] = "--exclusive"
    return out


def job_resources(
    config: Mapping[str, Any],
    rule: str,
    *,
    roles: Iterable[str] = (),
    endpoints: Iterable[str] = (),
    segmenter: bool = False,
    own_gpus: int = 0,
    kind: str | None = None,
) -> dict[str, Any]:
    """Resource values of the jobs of ``rule`` (for ``resources: **job_resources(...)``).

    See :func:`job_needs` for the arguments. Keys: ``gpu`` (only when > 0), ``cpus_per_gpu``
    and ``gpu_model`` (GPU jobs), ``mem_mb``, ``runtime``, ``nodes`` and ``slurm_extra`` (train).
    CPU jobs get their CPUs from the rule's ``threads`` (``--cpus-per-task``).
    """
    needs = job_needs(
        config,
        rule,
        roles=roles,
        endpoints=endpoints,
        segmenter=segmenter,
        own_gpus=own_gpus,
        kind=kind,
    )
    return resources_of(config, needs)


def evaluation_resources(config: Mapping[str, Any], rule: str = "evaluate") -> dict[str, Any]:
    """Resources of the evaluation jobs, which depend on the ``{model}`` wildcard.

    Each evaluated model's endpoint plus the judge's: launched ones add their GPUs. Every model
    is checked against the node size now (so a misfit fails when the DAG is built). Returns
    ``{key: function(wildcards)}`` with the same keys for every model (``gpu: 0`` and no GPU
    options for a model that needs no GPU).
    """
    ev = config.get("evaluation") or {}
    judge = ev.get("judge") or None
    per_model: dict[str, dict[str, Any]] = {}
    for name, spec in (ev.get("models") or {}).items():
        eps = [spec["endpoint"]] + ([judge["endpoint"]] if judge else [])
        per_model[name] = job_resources(config, rule, endpoints=eps)
    keys: dict[str, Any] = {"gpu": 0}
    for res in per_model.values():
        keys.update(dict.fromkeys(res))
    if not per_model:
        return job_resources(config, rule)

    def value(key: str) -> Callable[[Any], Any]:
        def get(wildcards: Any) -> Any:
            res = per_model.get(wildcards.model)
            if res is None:  # not a configured model: the input functions say so
                res = job_resources(config, rule)
            if key in res:
                return res[key]
            return 0 if key in ("gpu", "cpus_per_gpu") else ""

        return get

    return {key: value(key) for key in keys}
