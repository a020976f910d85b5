"""A cheap signature of the image pools (names, sizes, modification times).

Snakemake decides what to rerun from file modification times. A folder's own mtime does not
change when a file deep inside it is edited, so the workflow keeps a small signature file that
is rewritten (at parse time, before the DAG is built) only when some file in a pool was added,
changed or removed. The manifest checkpoint depends on it; with nothing changed nothing reruns.
Only ``stat`` is used here: hashing and decoding happen in the manifest job, incrementally.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from r2i.io import atomic_write_text


def pool_signature(pools: Mapping[str, str]) -> dict[str, object]:
    """Return ``{"signature": hex, "files": n, "missing": [...]}`` for the given pools."""
    digest = hashlib.sha256()
    n_files = 0
    missing: list[str] = []
    for name in sorted(pools):
        root = Path(pools[name])
        if not root.is_dir():
            missing.append(name)
            digest.update(f"missing:{name}\n".encode())
            continue
        entries: list[tuple[str, int, int]] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fname in filenames:
                if fname.startswith("."):
                    continue
                path = os.path.join(dirpath, fname)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                entries.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
        entries.sort()
        for rel, size, mtime in entries:
            digest.update(f"{name}\0{rel}\0{size}\0{mtime}\n".encode())
        n_files += len(entries)
    return {"signature": digest.hexdigest(), "files": n_files, "missing": missing}


def update_pool_signature(
    pools: Mapping[str, str], path: str | Path, *, only_if_exists: bool = False
) -> bool:
    """Write the signature to ``path`` if it differs from what is there; return True if written."""
    path = Path(path)
    if only_if_exists and not path.exists():
        return False
    new = pool_signature(pools)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old == new:
        return False
    atomic_write_text(path, json.dumps(new, indent=1, sort_keys=True) + "\n")
    return True
