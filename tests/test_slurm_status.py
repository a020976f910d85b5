"""Job states as sacct prints them reach snakemake-executor-plugin-slurm as states it acts on.

The plugin's own status loop (``Executor.check_active_jobs`` of the pinned 2.8.0) is driven with
the state column that sacct really prints (``CANCELLED by 0`` after scancel, ``TIMEOUT``,
``PREEMPTED``, ``NODE_FAIL``): without r2i.slurm_status a cancelled or preempted job is waited
for forever; with it every such job is reported as failed (so the profile's ``retries``
resubmit it). The same wrapper is what the workflow installs (rules/common.smk); the cluster
test in tests/test_slurm_toy.py scancels a real running job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from r2i.slurm_status import StateNormaliser, install, normalise_state

plugin = pytest.importorskip("snakemake_executor_plugin_slurm")


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED by 1000", "CANCELLED"),
        ("CANCELLED+", "CANCELLED"),
        ("TIMEOUT", "TIMEOUT"),
        ("NODE_FAIL", "NODE_FAIL"),
        ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
        ("SPECIAL_EXIT", "FAILED"),
        ("COMPLETED", "COMPLETED"),
        ("RUNNING", "RUNNING"),
        ("pending", "PENDING"),
        ("", ""),
    ],
)
def test_normalise_state(raw: str, state: str) -> None:
    assert normalise_state(raw) == state


def test_preempted_counts_as_failed_when_not_requeued() -> None:
    norm = StateNormaliser()
    assert norm({"7": "PREEMPTED"}) == {"7": "PENDING"}  # SLURM may still requeue it
    assert norm({"7": "PREEMPTED"}) == {"7": "CANCELLED"}  # it did not: fail, resubmit
    # requeued in between: starts over
    norm2 = StateNormaliser()
    norm2({"8": "PREEMPTED"})
    assert norm2({"8": "PENDING"}) == {"8": "PENDING"}
    assert norm2({"8": "PREEMPTED"}) == {"8": "PENDING"}


class _Recorder:
    def __init__(self) -> None:
        self.success: list[str] = []
        self.error: dict[str, str] = {}


def _executor(rec: _Recorder):
    """The plugin's Executor without its constructor (no workflow, no threads)."""
    ex = plugin.Executor.__new__(plugin.Executor)
    ex.workflow = SimpleNamespace(
        executor_settings=SimpleNamespace(
            init_seconds_before_status_checks=20,
            status_attempts=1,
            status_command="sacct",
            keep_successful_logs=True,
            requeue=False,
        )
    )
    ex.logger = logging.getLogger("test-slurm-plugin")
    ex.status_rate_limiter = contextlib.nullcontext()
    ex.run_uuid = "run-1"
    ex._status_query_calls = ex._status_query_failures = 0
    ex._status_query_total_seconds = ex._status_query_max_seconds = 0.0
    ex._status_query_min_seconds = None
    ex._status_query_cycle_rows = []
    ex._preemption_warning = False
    ex._failed_nodes = set()
    ex.next_seconds_between_status_checks = 20
    ex.report_job_success = lambda j: rec.success.append(j.external_jobid)
    ex.report_job_error = lambda j, msg=None, aux_logs=None: rec.error.__setitem__(
        j.external_jobid, msg or ""
    )
    return ex


SACCT = {  # what `sacct -X --parsable2 --format=JobIdRaw,State` prints for these jobs
    "101": "CANCELLED by 0",  # scancel of a running job
    "102": "TIMEOUT",
    "103": "PREEMPTED",
    "104": "NODE_FAIL",
    "105": "COMPLETED",
    "106": "RUNNING",
}


def _poll(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, normalised: bool, rounds: int):
    from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

    async def sacct(command: str, logger):  # the plugin's query, answered with sacct's text
        assert command.startswith("sacct"), command
        return dict(SACCT), 0.01

    monkeypatch.setattr(plugin, "query_job_status", sacct)
    monkeypatch.setattr(plugin, "get_min_job_age", lambda: None)  # no scontrol here
    if normalised:
        assert install(plugin)
        assert install(plugin), "idempotent"
    rec = _Recorder()
    ex = _executor(rec)
    active = [
        SubmittedJobInfo(job=SimpleNamespace(), external_jobid=jid,
                         aux={"slurm_logfile": tmp_path / f"{jid}.log"})
        for jid in SACCT
    ]  # fmt: skip

    async def run() -> list[str]:
        still = active
        for _ in range(rounds):
            still = [j async for j in ex.check_active_jobs(still)]
        return [j.external_jobid for j in still]

    return rec, asyncio.run(run())


def test_plugin_alone_waits_for_cancelled_and_preempted_jobs(monkeypatch, tmp_path) -> None:
    """Documents the bug: without the normaliser these jobs stay 'active' forever."""
    rec, still = _poll(monkeypatch, tmp_path, normalised=False, rounds=3)
    assert "101" in still and "103" in still
    assert set(rec.error) == {"102", "104"}  # TIMEOUT and NODE_FAIL were always handled


def test_every_failure_state_is_reported(monkeypatch, tmp_path) -> None:
    rec, still = _poll(monkeypatch, tmp_path, normalised=True, rounds=2)
    assert set(rec.error) == {"101", "102", "103", "104"}, (rec.error, still)
    assert rec.success == ["105"]
    assert still == ["106"]  # running jobs are still waited for
    assert "CANCELLED" in rec.error["101"]
    assert "NODE_FAIL" in rec.error["104"] or "node failure" in rec.error["104"]


def test_install_without_plugin_function_is_refused() -> None:
    assert install(SimpleNamespace()) is False

    def not_async(command, logger):
        return {}, 0.0

    assert install(SimpleNamespace(query_job_status=not_async)) is False
