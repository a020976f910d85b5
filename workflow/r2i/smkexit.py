"""Let Snakemake exit as soon as its last job is done.

After every scheduling round that started or held back jobs, Snakemake's job scheduler arms a
``threading.Timer`` for the ``--max-jobs-per-timespan`` window (default ``100/1s``) that wakes the
scheduler again (``JobScheduler._schedule_reevalutation`` in snakemake 9). The timer thread is not
a daemon, so when the workflow has finished, the interpreter waits for the last one to expire
before the process ends: up to a second added to every run that executed a job (py-spy on
``bench/bench_pipeline.py``: 1.2 s in ``threading._shutdown`` after the last job). The workflow's
``onsuccess``/``onerror`` handlers run after the scheduler has returned, so nothing is left for
those timers to wake; :func:`cancel_scheduler_timers` cancels them there.
"""

from __future__ import annotations

import threading


def _is_scheduler_timer(thread: threading.Thread) -> bool:
    fn = getattr(thread, "function", None)
    code = getattr(fn, "__code__", None)
    filename = getattr(code, "co_filename", "").replace("\\", "/")
    return isinstance(thread, threading.Timer) and "snakemake/scheduling/" in filename


def cancel_scheduler_timers() -> int:
    """Cancel the pending re-evaluation timers of Snakemake's scheduler; how many were pending.

    Only timers whose callback comes from ``snakemake/scheduling/`` are touched. Call it only
    once the scheduler has returned (``onsuccess:``/``onerror:``), never while jobs can run.
    """
    pending = [t for t in threading.enumerate() if t.is_alive() and _is_scheduler_timer(t)]
    for t in pending:
        t.cancel()  # type: ignore[attr-defined]
    return len(pending)


def freeze_heap() -> None:
    """Exempt everything allocated so far from the cyclic garbage collector (``gc.freeze``).

    A Python process's final collections at exit walk every object still alive. Snakemake, its
    plugins (the SLURM one imports pandas) and this library hold several hundred thousand
    long-lived objects once the Snakefile is parsed: ~0.6 s of every Snakemake process on these
    machines, also when there is nothing to do (measured: a bare ``import snakemake.api, pandas``
    exits in 0.60 s, in 0.06 s after ``gc.freeze()``); a synthesis or dataset job pays
    0.13-0.18 s after its outputs are written. Called once parsing is done (the Snakefile) and
    when a job's work is done (its rule script): what is frozen then is module state that lives
    until exit anyway; whatever is allocated afterwards is collected as usual.
    """
    import gc

    gc.freeze()
