"""Job states that snakemake-executor-plugin-slurm understands, whatever sacct prints.

Why: the plugin (2.8.0, the newest release) compares the state column of ``sacct`` with fixed
names (``CANCELLED``, ``TIMEOUT``, ...), but sacct prints a job cancelled with ``scancel`` as
``CANCELLED by <uid>`` and may append ``+`` to truncated names, so a cancelled job looked like a
running one and Snakemake waited for it forever. A job that was preempted and not requeued
(``PREEMPTED``) was also waited for forever: the plugin leaves preempted jobs to SLURM.

:func:`install` wraps the plugin's status query (``query_job_status``, the one call through
which both its ``sacct`` and ``squeue`` modes go) so that every state is reduced to its name
before the plugin looks at it:

* ``CANCELLED by 0`` -> ``CANCELLED``, ``CANCELLED+`` -> ``CANCELLED``; the plugin then reports
  the job as failed and Snakemake resubmits it (``retries`` in the profile);
* ``PREEMPTED``: still ``PREEMPTED`` in the next status check means SLURM did not requeue it (the
  profile submits with ``--no-requeue``), so it is reported as failed (``CANCELLED``) and
  resubmitted; at the first sighting it counts as pending, in case SLURM requeues it;
* ``SPECIAL_EXIT`` (held after a special exit code) -> ``FAILED``;
* ``TIMEOUT``, ``NODE_FAIL``, ``OUT_OF_MEMORY``, ``BOOT_FAIL``, ``DEADLINE``, ``FAILED`` pass
  unchanged: the plugin already reports them as failures.

The workflow installs it in the main Snakemake process (``rules/common.smk``); it changes
nothing when the plugin is not installed, and refuses (with a warning that names the fallback,
``--slurm-status-command squeue``) when the plugin's status query has an unexpected shape.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["StateNormaliser", "install", "normalise_state"]

log = logging.getLogger(__name__)

_MARK = "_r2i_state_normaliser"

# states that the plugin waits on (yields) although the job will not run again
_AS_FAILED = {"SPECIAL_EXIT": "FAILED"}


def normalise_state(raw: str) -> str:
    """The bare state name of a sacct/squeue state column (``CANCELLED by 0`` -> ``CANCELLED``)."""
    text = (raw or "").strip()
    if not text:
        return text
    name = text.split()[0].rstrip("+").upper()
    return _AS_FAILED.get(name, name)


class StateNormaliser:
    """Maps a status query's ``{job id: state}`` to states the plugin acts on correctly.

    Keeps the job ids seen ``PREEMPTED`` once: the second sighting reports the job as failed.
    """

    def __init__(self) -> None:
        self._preempted: set[str] = set()

    def __call__(self, states: Mapping[str, str], logger: Any = None) -> dict[str, str]:
        out: dict[str, str] = {}
        lg = logger or log
        for jobid, raw in states.items():
            state = normalise_state(raw)
            if state == "PREEMPTED":
                if jobid in self._preempted:
                    lg.warning(
                        f"SLURM job {jobid} was preempted and not requeued: reported as failed, "
                        "so Snakemake resubmits it (retries)"
                    )
                    state = "CANCELLED"
                else:
                    self._preempted.add(jobid)
                    lg.warning(
                        f"SLURM job {jobid} was preempted; if SLURM does not requeue it by the "
                        "next status check, it is reported as failed and resubmitted"
                    )
                    state = "PENDING"
            else:
                self._preempted.discard(jobid)
            out[jobid] = state
        return out


QueryFn = Callable[[str, Any], Awaitable[tuple[dict[str, str] | None, float | None]]]


def _wrap(query: QueryFn, normaliser: StateNormaliser) -> QueryFn:
    @functools.wraps(query)
    async def query_job_status(command: str, logger: Any):  # type: ignore[no-untyped-def]
        states, duration = await query(command, logger)
        if states is not None:
            states = normaliser(states, logger)
        return states, duration

    setattr(query_job_status, _MARK, True)
    return query_job_status


def install(module: Any = None) -> bool:
    """Wrap the SLURM plugin's status query with :class:`StateNormaliser` (idempotent).

    ``module``: the plugin module (default: ``snakemake_executor_plugin_slurm`` if installed).
    Returns True when the wrapper is in place.
    """
    if module is None:
        try:
            import snakemake_executor_plugin_slurm as module  # type: ignore[no-redef]
        except ImportError:
            return False
    query = getattr(module, "query_job_status", None)
    if query is None:
        log.warning(
            "snakemake-executor-plugin-slurm has no query_job_status: job states are not "
            "normalised (a job cancelled with scancel may not be noticed; use "
            "--slurm-status-command squeue)"
        )
        return False
    if getattr(query, _MARK, False):
        return True
    params = list(inspect.signature(query).parameters)
    if not inspect.iscoroutinefunction(query) or params[:2] != ["command", "logger"]:
        log.warning(
            "snakemake-executor-plugin-slurm's query_job_status has an unexpected signature "
            f"{params}: job states are not normalised (use --slurm-status-command squeue)"
        )
        return False
    module.query_job_status = _wrap(query, StateNormaliser())
    return True
