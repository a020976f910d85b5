"""Outputs without a Snakemake provenance record are rebuilt, not trusted.

Snakemake records each finished job's params, code and inputs (``.snakemake/metadata/``) so that
a later settings change reruns exactly the jobs it affects. Only the main Snakemake process writes
that record, when it sees the job finish. After ``kill -9`` of the main process a job can finish
on its own, and on a cluster (SLURM) the job's own Snakemake then clears the job's *incomplete*
mark without recording anything (``persistence.finished`` in remote mode). The output looks
complete, so the rerun keeps it, and it never gets a record: a later settings change does not
rerun it (Snakemake only logs that some outputs have no metadata), so one shard silently keeps
results built with the old settings.

:func:`mark_unrecorded_outputs` runs when the workflow is parsed: every existing file that a
rule of the workflow declares as output but that has neither a record nor an incomplete mark is
marked incomplete, so the workflow profile's ``rerun-incomplete`` rebuilds it and Snakemake
records it. Rebuilding costs no model calls (they are in the call cache). It only looks at
Snakemake's file-based store (the default), does nothing before the first run and while another
Snakemake holds the working directory's lock, and is skipped where provenance is off
(``--drop-metadata``) and in a cluster job's own Snakemake (the Snakefile decides). Dry runs mark
too, so that ``snakemake -n`` plans what the real run will do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["mark_outputs_without_provenance", "mark_unrecorded_outputs", "output_roots",
           "record_path", "unrecorded_outputs"]

log = logging.getLogger("r2i.provenance")


def record_path(state_dir: str | os.PathLike[str], subject: str, key: str) -> Path:
    """Where Snakemake's file store keeps ``subject`` (``metadata``/``incomplete``) for ``key``.

    Mirrors ``snakemake.persistence.file.FilePersistence._record_path``: the url-safe base64 of
    the path, split into chunks below the file-name limit.
    """
    base = Path(state_dir) / subject
    max_len = 255
    with contextlib.suppress(OSError, ValueError):
        max_len = os.pathconf(base if base.exists() else Path(state_dir).parent, "PC_NAME_MAX") or 255
    b64 = urlsafe_b64encode(key.encode()).decode()
    parts = [b64[i : i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    parts = ["@" + p for p in parts[:-1]] + [parts[-1]]
    return base.joinpath(*parts)


def _locked(state_dir: Path) -> bool:
    locks = state_dir / "locks"
    return locks.is_dir() and any(locks.iterdir())


#: How much later than its record a file may have been written and still be the recorded one
#: (file systems with coarse time stamps).
_MTIME_SLACK_S = 1.0


def _describes(record: Path, path: str) -> bool:
    """Whether Snakemake's metadata ``record`` is about the file at ``path`` as it is now.

    Snakemake writes a job's records once the job has ended, after its outputs, so a record is
    never older than the file it describes. It records the outputs of a *failed* job too
    (``Job.postprocess`` calls ``persistence.finished`` also on error; the outputs are then
    deleted, the record stays). If a job that Snakemake no longer watches (it was killed) writes
    that output later, the record predates the file: it is a failed attempt's, not this file's.
    Two ``stat`` calls, no record parsed: this runs for every output at every Snakemake start.
    (``--touch`` rewrites the records after touching, so touched outputs still count.)
    """
    try:
        recorded = os.stat(record).st_mtime
    except OSError:
        return False
    if os.path.isdir(path):
        return True
    try:
        return os.stat(path).st_mtime <= recorded + _MTIME_SLACK_S
    except OSError:
        return True  # gone meanwhile: nothing to rebuild here


def unrecorded_outputs(
    roots: Iterable[str | os.PathLike[str]],
    is_output: Callable[[str], bool],
    state_dir: str | os.PathLike[str] = ".snakemake",
) -> list[str]:
    """Existing paths under ``roots`` that ``is_output`` accepts and that Snakemake has neither
    a metadata record nor an incomplete mark for (paths relative to the working directory, as
    Snakemake keys them)."""
    state = Path(state_dir)
    found: list[str] = []
    seen: set[str] = set()
    for root in roots:
        root = os.path.normpath(str(root))
        if not os.path.exists(root):
            continue
        candidates = [root] if os.path.isfile(root) else []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            candidates.extend(os.path.join(dirpath, d) for d in dirnames)
            candidates.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                              if not f.startswith("."))
        for path in candidates:
            if path in seen or not is_output(path):
                continue
            seen.add(path)
            if _describes(record_path(state, "metadata", path), path):
                continue
            if record_path(state, "incomplete", path).exists():
                continue
            found.append(path)
    return found


def mark_unrecorded_outputs(
    roots: Iterable[str | os.PathLike[str]],
    is_output: Callable[[str], bool],
    state_dir: str | os.PathLike[str] = ".snakemake",
) -> list[str]:
    """Mark :func:`unrecorded_outputs` incomplete; return them.

    Does nothing before the first run (no ``state_dir``) and while the directory is locked by a
    running Snakemake, which may be about to record a job it has just seen finish.
    """
    state = Path(state_dir)
    if not (state / "metadata").is_dir() or _locked(state):
        return []
    paths = unrecorded_outputs(roots, is_output, state)
    if not paths:
        return []
    for path in paths:
        marker = record_path(state, "incomplete", path)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"external_jobid": None}), encoding="utf-8")
    shown = ", ".join(paths[:8]) + (f" and {len(paths) - 8} more" if len(paths) > 8 else "")
    log.warning(
        "%d output(s) have no Snakemake provenance record (a job finished after Snakemake was "
        "killed): %s. They are marked incomplete and rebuilt (model calls come from the call "
        "cache), so that later settings changes rerun them.", len(paths), shown,
    )
    return paths


def output_roots(patterns: Iterable[str]) -> list[str]:
    """The folders (or files) to search for outputs matching ``patterns`` (rule outputs with
    ``{wildcards}``): the constant part of each, without folders nested in another."""
    roots: set[str] = set()
    for pat in patterns:
        head = pat.split("{", 1)[0]
        root = os.path.dirname(head) if "{" in pat else pat
        root = os.path.normpath(root) if root else ""
        if root and root != ".":
            roots.add(root)
    kept: list[str] = []
    for r in sorted(roots):
        if not any(r == k or r.startswith(k.rstrip(os.sep) + os.sep) for k in kept):
            kept.append(r)
    return kept


def mark_outputs_without_provenance(workflow: Any) -> list[str]:
    """The Snakefile's hook (called after every rule is defined): mark the declared outputs of
    ``workflow`` (Snakemake's ``workflow`` object) that have no provenance record incomplete.

    Main Snakemake only (not a cluster job's own Snakemake), file-based persistence only, and
    not with ``--drop-metadata`` (read from the command line: Snakemake's execution settings do
    not exist yet while the Snakefile is parsed).
    """
    from snakemake_interface_executor_plugins.settings import ExecMode

    backend = str(getattr(workflow.workflow_settings, "persistence_backend", "file")).lower()
    if workflow.exec_mode != ExecMode.DEFAULT or "--drop-metadata" in sys.argv or not backend.endswith("file"):
        return []
    outputs = [o for rule in workflow.rules for o in rule.output]
    return mark_unrecorded_outputs(output_roots(str(o) for o in outputs),
                                   lambda path: any(o.match(path) for o in outputs))
