"""A cheap signature of the image pools (names, sizes, modification times).

Snakemake decides what to rerun from file modification times. A folder's own mtime does not
change when a file deep inside it is edited, so the workflow keeps a small signature file that
is rewritten (at parse time, before the DAG is built) only when some file in a pool was added,
changed or removed. The manifest checkpoint depends on it; with nothing changed nothing reruns.
Only ``stat`` is used here: hashing and decoding happen in the manifest job, incrementally.

Symlinked directories are followed, each real directory (device + inode) once, exactly as the
manifest scan (``r2i.manifest.iter_pool_files``) does: a link loop such as ``ln -s . a`` ends
instead of making the walk (at DAG parse time, too) run forever, and a second link to a folder
already seen is skipped. Skipped links are listed in the signature file (``skipped_dirs``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from r2i.io import atomic_write_text


def walk_pool(root: str | os.PathLike[str]) -> tuple[list[tuple[str, int, int]], list[str]]:
    """``([(relative path, size, mtime_ns), ...], [skipped directory, ...])`` of a pool folder.

    Hidden files and folders are ignored. Each real directory is entered once (the walk is
    top-down in sorted order, like the manifest scan, so both keep the same copy); a directory
    reached again through a link (a loop, or a second link to it) is skipped and listed.
    """
    entries: list[tuple[str, int, int]] = []
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            skipped.append(Path(os.path.relpath(dirpath, root)).as_posix())
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if fname.startswith("."):
                continue
            path = os.path.join(dirpath, fname)
            try:
                fst = os.stat(path)
            except OSError:
                continue
            entries.append((os.path.relpath(path, root), fst.st_size, fst.st_mtime_ns))
    entries.sort()
    return entries, sorted(skipped)


def pool_signature(pools: Mapping[str, str]) -> dict[str, object]:
    """Return ``{"signature": hex, "files": n, "missing": [...]}`` for the given pools.

    ``skipped_dirs`` (``{pool: [relative paths]}``) is added only when some link led to a
    directory already walked, so signature files of pools without such links stay unchanged.
    """
    digest = hashlib.sha256()
    n_files = 0
    missing: list[str] = []
    skipped_dirs: dict[str, list[str]] = {}
    for name in sorted(pools):
        root = Path(pools[name])
        if not root.is_dir():
            missing.append(name)
            digest.update(f"missing:{name}\n".encode())
            continue
        entries, skipped = walk_pool(root)
        if skipped:
            skipped_dirs[name] = skipped
        for rel, size, mtime in entries:
            digest.update(f"{name}\0{rel}\0{size}\0{mtime}\n".encode())
        n_files += len(entries)
    out: dict[str, object] = {"signature": digest.hexdigest(), "files": n_files, "missing": missing}
    if skipped_dirs:
        out["skipped_dirs"] = skipped_dirs
    return out


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
