"""A signature of the image pools' contents that is cheap to keep up to date.

Snakemake decides what to rerun from file modification times. A folder's own mtime does not
change when a file deep inside it is edited, so the workflow keeps a small signature file that
is rewritten (at parse time, before the DAG is built) only when some file in a pool was added,
removed or changed. The manifest checkpoint depends on it; with nothing changed nothing reruns.

The signature hashes each file's path, size and **content hash**, not its mtime, so a file that
was only touched (same bytes, new mtime: a copy with ``cp``, an rsync, a checkout) changes
nothing and reruns nothing. Content hashes come from a state file (``path -> size, mtime,
sha256``): a file whose size and mtime are unchanged is not read again; one whose stat changed is
hashed once, at parse time, and remembered. A fresh state (first run, or the state deleted)
costs one read of every file.

Symlinked directories are followed, each real directory (device + inode) once, exactly as the
manifest scan (``r2i.manifest.iter_pool_files``) does: a link loop such as ``ln -s . a`` ends
instead of making the walk (at DAG parse time, too) run forever, and a second link to a folder
already seen is skipped. Skipped links are listed in the signature file (``skipped_dirs``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from r2i.io import atomic_write_text


class HashState:
    """``abs path -> (size, mtime_ns, sha256)`` of pool files, loaded from and saved to a JSON
    file (``None``: in memory only). A damaged file is treated as empty."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._map: dict[str, tuple[int, int, str]] = {}
        self._dirty = False
        if self.path is not None:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._map = {k: (int(v[0]), int(v[1]), str(v[2])) for k, v in raw.items()}
            except (OSError, ValueError, TypeError, IndexError, AttributeError):
                self._map = {}

    def lookup(self, path: str, size: int, mtime_ns: int) -> str | None:
        hit = self._map.get(path)
        return hit[2] if hit is not None and hit[0] == size and hit[1] == mtime_ns else None

    def fill(self, todo: list[tuple[str, int, int]]) -> dict[str, str | None]:
        """Hash the files ``(path, size, mtime)`` (in threads: hashlib releases the GIL)."""

        def one(item: tuple[str, int, int]) -> tuple[str, str | None]:
            try:
                h = hashlib.sha256()
                with open(item[0], "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                return item[0], h.hexdigest()
            except OSError:
                return item[0], None  # unreadable: the manifest reports it

        if not todo:
            return {}
        with ThreadPoolExecutor(min(8, len(todo))) as pool:
            done = dict(pool.map(one, todo))
        for path, size, mtime in todo:
            if done.get(path):
                self._map[path] = (size, mtime, done[path])  # type: ignore[assignment]
                self._dirty = True
        return done

    def prune(self, keep: set[str]) -> None:
        gone = set(self._map) - keep
        for k in gone:
            del self._map[k]
        self._dirty = self._dirty or bool(gone)

    def save(self) -> None:
        if self.path is not None and self._dirty:
            # only a cache: if it cannot be written, the next parse hashes those files again
            with contextlib.suppress(OSError):
                atomic_write_text(self.path, json.dumps(self._map, sort_keys=True))
            self._dirty = False


def real_dirs(root: str | os.PathLike[str], skipped: list[str] | None = None
              ) -> Iterator[tuple[str, list[str]]]:
    """``(directory, file names)`` of every real directory under ``root``, each entered once.

    Symlinked directories are followed (pools are often assembled from links), top-down with
    sub-directories in sorted order, hidden ones left out; a directory reached again through a
    link (a loop, or a second link to it) is not entered again, and its path relative to
    ``root`` is appended to ``skipped``. Shared by this module and the manifest scan, so both
    see the same files and keep the same copy of a twice-linked folder.
    """
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            if skipped is not None:
                skipped.append(Path(os.path.relpath(dirpath, root)).as_posix())
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, filenames


def walk_pool(root: str | os.PathLike[str]) -> tuple[list[tuple[str, int, int]], list[str]]:
    """``([(relative path, size, mtime_ns), ...], [skipped directory, ...])`` of a pool folder.

    Hidden files and folders are ignored. Each real directory is entered once (the walk is
    top-down in sorted order, like the manifest scan, so both keep the same copy); a directory
    reached again through a link (a loop, or a second link to it) is skipped and listed.
    """
    entries: list[tuple[str, int, int]] = []
    skipped: list[str] = []
    for dirpath, filenames in real_dirs(root, skipped):
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


def pool_signature(pools: Mapping[str, str],
                   state: str | os.PathLike[str] | HashState | None = None) -> dict[str, object]:
    """Return ``{"signature": hex, "files": n, "missing": [...]}`` for the given pools.

    ``state`` is the :class:`HashState` (or its file) that remembers content hashes; without it
    every file is read. ``skipped_dirs`` (``{pool: [relative paths]}``) is added only when some
    link led to a directory already walked, so signature files of pools without such links stay
    unchanged.
    """
    hs = state if isinstance(state, HashState) else HashState(state)
    digest = hashlib.sha256()
    n_files = 0
    missing: list[str] = []
    skipped_dirs: dict[str, list[str]] = {}
    walked: list[tuple[str, list[tuple[str, int, int]]]] = []
    for name in sorted(pools):
        root = Path(pools[name])
        if not root.is_dir():
            missing.append(name)
            continue
        entries, skipped = walk_pool(root)
        if skipped:
            skipped_dirs[name] = skipped
        walked.append((name, entries))
    # Content hashes: remembered ones, and the files whose size or mtime changed, read now.
    abspath = {(name, rel): os.path.abspath(os.path.join(pools[name], rel))
               for name, entries in walked for rel, _, _ in entries}
    todo = [(abspath[(name, rel)], size, mtime) for name, entries in walked
            for rel, size, mtime in entries if hs.lookup(abspath[(name, rel)], size, mtime) is None]
    fresh = hs.fill(todo)
    hs.prune(set(abspath.values()))
    for name in sorted(pools):
        if name in missing:
            digest.update(f"missing:{name}\n".encode())
    for name, entries in walked:
        for rel, size, mtime in entries:
            p = abspath[(name, rel)]
            sha = hs.lookup(p, size, mtime) or fresh.get(p) or f"unreadable:{mtime}"
            digest.update(f"{name}\0{rel}\0{size}\0{sha}\n".encode())
        n_files += len(entries)
    hs.save()
    out: dict[str, object] = {"signature": digest.hexdigest(), "files": n_files, "missing": missing}
    if skipped_dirs:
        out["skipped_dirs"] = skipped_dirs
    return out


def update_pool_signature(
    pools: Mapping[str, str], path: str | Path, *, only_if_exists: bool = False,
    state: str | os.PathLike[str] | None = None,
) -> bool:
    """Write the signature to ``path`` if it differs from what is there; return True if written.

    ``state``: the file that remembers content hashes (:class:`HashState`).
    """
    path = Path(path)
    if only_if_exists and not path.exists():
        return False
    new = pool_signature(pools, state)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old == new:
        return False
    atomic_write_text(path, json.dumps(new, indent=1, sort_keys=True) + "\n")
    return True
