"""Image manifest: scan the image pools, decide what is kept, and split the kept images into shards.

The manifest is the pipeline's first funnel stage. Every file found in a pool folder gets a record
saying whether it was kept and, if not, why (a stable reason code), so users can see what happened to
each of their images.

Decisions (documented here because downstream stages and the funnel report rely on them):

* **Walk**: pools are scanned in the order given, each recursively, files in sorted relative-path
  order. Symlinked directories and files are followed (pools are often assembled from links),
  each real directory once, so link loops end.
* **Hidden** files and directories (name starts with ``.``: ``.DS_Store``, AppleDouble ``._x.jpg``,
  ``.thumbnails/``, ``.git/``) are file-system metadata, not pool content: they are not recorded.
* **Obvious non-images** (:data:`NON_IMAGE_EXTENSIONS`: sidecar ``.json``/``.txt``/``.csv``,
  archives, videos ...) are recorded as dropped ``not_an_image`` without being read (no hash), so
  they show up in the funnel but cost nothing. Every other file, whatever its extension or none, is
  identified by content.
* **Verdict per file** (first that applies): ``unreadable`` (I/O error), ``not_an_image`` by
  extension, ``file_too_large`` (> 1 GiB, not read), ``zero_bytes``, ``not_an_image`` /
  ``unsupported_format`` / ``corrupt``, ``decompression_bomb``, ``too_small`` (from the header: a
  too-small image is not decoded, it is dropped anyway), ``truncated`` / ``corrupt`` /
  ``unsupported_mode`` (from a full decode), then ``duplicate``. ``kept`` images are exactly those
  that :func:`r2i.images.load_image` decodes and whose width AND height are > ``min_side``.
* **Duplicates**: identical bytes (same sha256) anywhere in any pool: the first kept one in scan
  order is kept, later ones are dropped as ``duplicate`` with ``duplicate_of`` naming the first.
* **Shards**: ``shard = sha256(pool + NUL + rel_path) mod n_shards``, a function of where the
  image is (:func:`shard_of`), not of its bytes: editing an image keeps it in its shard, so only
  that shard reruns (a content-addressed shard would move it to another shard and rerun two),
  and adding or removing an image changes only its own shard. Renaming moves the image (like
  removing it and adding it). :func:`write_shard_lists` rewrites a shard file only when its
  content changes, keeping the mtime of unchanged shards so Snakemake does not rerun them; a
  touched file with the same bytes changes nothing.
* **Incremental**: with ``state_dir``, per-file verdicts are reused while a file's size and mtime
  (and the scan settings) are unchanged; dropping ``state_dir`` just means a full rescan.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

import PIL
import pyarrow as pa
import pyarrow.parquet as pq

from r2i import images
from r2i.images import ImageError
from r2i.io import atomic_write_bytes, read_parquet
from r2i.poolsig import real_dirs

__all__ = [
    "DEFAULT_MIN_SIDE",
    "DROP_REASONS",
    "MANIFEST_VERSION",
    "NON_IMAGE_EXTENSIONS",
    "ImageRecord",
    "build_manifest",
    "default_workers",
    "iter_pool_files",
    "kept_records",
    "read_manifest",
    "scan_file",
    "scan_pools",
    "shard_of",
    "shard_path",
    "shard_records",
    "summarize",
    "summary_path_for",
    "write_manifest",
    "write_shard_lists",
]

MANIFEST_VERSION: Final = 1
DEFAULT_MIN_SIDE: Final = 1200

KEPT: Final = "kept"
DROPPED: Final = "dropped"
TOO_SMALL: Final = "too_small"
DUPLICATE: Final = "duplicate"
FILE_TOO_LARGE: Final = "file_too_large"

DROP_REASONS: Final[frozenset[str]] = images.REASONS | {TOO_SMALL, DUPLICATE, FILE_TOO_LARGE}
"""Every ``reason`` a dropped record can carry."""

#: Read into memory once per file (hash and decode the same bytes); above this a file is dropped
#: unread. A 178 MP RGB image (the bomb limit) is ~540 MB even uncompressed.
DEFAULT_MAX_FILE_BYTES: Final = 1 << 30

NON_IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {
        # text / metadata sidecars
        ".json", ".jsonl", ".txt", ".csv", ".tsv", ".md", ".rst", ".yaml", ".yml", ".xml",
        ".html", ".htm", ".log", ".py", ".sh", ".ini", ".cfg", ".toml",
        # tables / arrays / checkpoints
        ".parquet", ".arrow", ".feather", ".npy", ".npz", ".pkl", ".pickle", ".pt", ".pth",
        ".safetensors", ".h5", ".hdf5",
        # archives
        ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar",
        # audio / video / documents
        ".mp4", ".avi", ".mov", ".mkv", ".webm", ".mp3", ".wav", ".flac", ".pdf",
    }
)  # fmt: skip
"""Extensions recorded as ``not_an_image`` without reading the file."""

#: Fewer files than this per worker are not worth a thread.
_MIN_FILES_PER_WORKER: Final = 2

_SHARD_RE: Final = re.compile(r"^shard-(\d{3,})\.json$")

_PARQUET_SCHEMA: Final = pa.schema(
    [
        pa.field("pool", pa.string(), nullable=False),
        pa.field("rel_path", pa.string(), nullable=False),
        pa.field("abs_path", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string()),
    ],
    metadata={"r2i_manifest_version": str(MANIFEST_VERSION)},
)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One file found in a pool.

    ``width``/``height`` are after EXIF orientation (the size :func:`r2i.images.load_image`
    returns); ``None`` when the file did not open. ``sha256`` is ``None`` only for files that were
    not read (skipped by extension, too large, unreadable). ``reason`` is ``None`` for kept images.
    """

    pool: str
    rel_path: str
    abs_path: str
    sha256: str | None
    size_bytes: int
    format: str | None
    mode: str | None
    width: int | None
    height: int | None
    status: str
    reason: str | None
    detail: str = ""
    duplicate_of: str | None = None

    @property
    def kept(self) -> bool:
        return self.status == KEPT

    @property
    def key(self) -> str:
        """``pool/rel_path``: how records name each other (``duplicate_of``) and in messages."""
        return f"{self.pool}/{self.rel_path}"


# --------------------------------------------------------------------------------------------------
# Scanning


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def iter_pool_files(root: str | os.PathLike[str]) -> Iterator[tuple[str, Path]]:
    """Yield ``(relative posix path, path)`` of every non-hidden file under ``root``, sorted.

    Symlinked directories are followed (pools are often assembled from links to dataset folders),
    each real directory at most once so link loops terminate; this matches what
    :mod:`r2i.poolsig` watches. Sorting the full relative path (not per directory) makes the order
    independent of the file system's listing order, which differs between machines; scan order
    decides which duplicate wins.
    """
    base = Path(root)
    found: list[tuple[str, Path]] = []
    for dirpath, filenames in real_dirs(base):
        for fname in filenames:
            if _is_hidden(fname):
                continue
            p = Path(dirpath, fname)
            found.append((p.relative_to(base).as_posix(), p))
    found.sort(key=lambda t: t[0])
    yield from found


def scan_file(
    pool: str,
    rel_path: str,
    path: str | os.PathLike[str],
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int | None = None,
    jpeg_draft: bool = True,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> ImageRecord:
    """Record for one file (never raises for a bad file; duplicates are decided later, globally).

    The file is read once: the same bytes are hashed and decoded, so the hash always describes the
    pixels that were checked even if the file changes during the scan.
    """
    p = Path(path)
    abs_path = os.path.abspath(p)
    base: dict[str, Any] = {"pool": pool, "rel_path": rel_path, "abs_path": abs_path}

    def dropped(reason: str, detail: str, **kw: Any) -> ImageRecord:
        fields_: dict[str, Any] = {
            "sha256": None,
            "size_bytes": 0,
            "format": None,
            "mode": None,
            "width": None,
            "height": None,
        }
        fields_.update(kw)
        return ImageRecord(**base, **fields_, status=DROPPED, reason=reason, detail=detail)

    try:
        size = p.stat().st_size
    except OSError as e:
        return dropped(images.UNREADABLE, f"stat failed: {e.strerror or e}")
    ext = p.suffix.lower()
    if ext in NON_IMAGE_EXTENSIONS:
        return dropped(images.NOT_AN_IMAGE, f"skipped by extension {ext}", size_bytes=size)
    if size > max_file_bytes:
        return dropped(FILE_TOO_LARGE, f"{size} bytes > {max_file_bytes}", size_bytes=size)
    try:
        data = p.read_bytes()
    except OSError as e:
        return dropped(images.UNREADABLE, f"read failed: {e.strerror or e}", size_bytes=size)
    digest = images.image_hash_bytes(data)
    try:
        info = images.probe_image(
            data, abs_path, max_pixels=max_pixels, min_side=min_side, jpeg_draft=jpeg_draft
        )
    except ImageError as e:
        return dropped(e.reason, e.detail, sha256=digest, size_bytes=len(data))
    common: dict[str, Any] = {
        "sha256": digest,
        "size_bytes": len(data),
        "format": info.format,
        "mode": info.mode,
        "width": info.width,
        "height": info.height,
    }
    if not (info.width > min_side and info.height > min_side):
        return dropped(
            TOO_SMALL, f"{info.width}x{info.height}: both sides must be > {min_side}", **common
        )
    return ImageRecord(**base, **common, status=KEPT, reason=None)


def _scan_task(args: tuple[str, str, str, dict[str, Any]]) -> ImageRecord:
    pool, rel, path, kw = args
    return scan_file(pool, rel, path, **kw)


def _mark_duplicates(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    first: dict[str, str] = {}
    out: list[ImageRecord] = []
    for r in records:
        sha = r.sha256
        if r.kept and sha is not None:
            if sha in first:
                r = replace(
                    r,
                    status=DROPPED,
                    reason=DUPLICATE,
                    detail=f"same content as {first[sha]}",
                    duplicate_of=first[sha],
                )
            else:
                first[sha] = r.key
        out.append(r)
    return out


def default_workers() -> int:
    """CPUs this process may use (respects SLURM / taskset affinity, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _fingerprint(min_side: int, max_pixels: int, jpeg_draft: bool, max_file_bytes: int) -> str:
    # Everything a cached per-file verdict depends on besides the file itself.
    return json.dumps(
        {
            "manifest_version": MANIFEST_VERSION,
            "min_side": min_side,
            "max_pixels": max_pixels,
            "jpeg_draft": jpeg_draft,
            "max_file_bytes": max_file_bytes,
            "pillow": PIL.__version__,
        },
        sort_keys=True,
    )


_CACHE_FILE: Final = "scan-cache.parquet"
_CACHE_SCHEMA: Final = _PARQUET_SCHEMA.append(pa.field("mtime_ns", pa.int64(), nullable=False))


def _load_scan_cache(state_dir: Path, fingerprint: str) -> dict[str, tuple[int, int, ImageRecord]]:
    """``abs_path -> (size, mtime_ns, record)`` from the last scan, empty if absent or stale."""
    path = state_dir / _CACHE_FILE
    try:
        table = read_parquet(path)
    except (OSError, pa.ArrowException):
        return {}
    meta = table.schema.metadata or {}
    if meta.get(b"fingerprint", b"").decode() != fingerprint:
        return {}
    names = {f.name for f in fields(ImageRecord)}
    out: dict[str, tuple[int, int, ImageRecord]] = {}
    for row in table.to_pylist():
        rec = ImageRecord(**{k: v for k, v in row.items() if k in names})
        out[rec.abs_path] = (rec.size_bytes, row["mtime_ns"], rec)
    return out


def _save_scan_cache(
    state_dir: Path, fingerprint: str, entries: Sequence[tuple[ImageRecord, int]]
) -> None:
    columns: dict[str, list[Any]] = {
        f.name: [getattr(r, f.name) for r, _ in entries] for f in fields(ImageRecord)
    }
    columns["mtime_ns"] = [m for _, m in entries]
    schema = _CACHE_SCHEMA.with_metadata({"fingerprint": fingerprint})
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), sink, compression="zstd")
    atomic_write_bytes(state_dir / _CACHE_FILE, sink.getvalue().to_pybytes())


def scan_pools(
    pools: Mapping[str, str | os.PathLike[str]],
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    workers: int | None = None,
    max_pixels: int | None = None,
    jpeg_draft: bool = True,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    state_dir: str | os.PathLike[str] | None = None,
) -> list[ImageRecord]:
    """Scan named pool folders (``{"pool_name": "folder"}``) and return one record per file.

    Records come in scan order (pools in mapping order, files sorted), which is also the order in
    which duplicates are resolved.

    * ``workers``: threads checking files (default: the CPUs this process may use, which
      respects SLURM/taskset affinity; pass the rule's ``threads``).
    * ``max_pixels`` sets the decompression-bomb limit, process-wide
      (:func:`r2i.images.set_max_pixels`); ``None`` keeps the current one.
    * ``state_dir``: makes rescans incremental. Per-file verdicts are cached there keyed by
      absolute path, size and mtime (the same stat data :mod:`r2i.poolsig` watches) plus every
      setting they depend on; only new or changed files are read and decoded again.

    Raises ``FileNotFoundError`` for a pool folder that does not exist (a configuration error,
    not a bad image).
    """
    if max_pixels is not None:
        images.set_max_pixels(max_pixels)
    limit = images.get_max_pixels()
    kw: dict[str, Any] = {
        "min_side": min_side,
        "max_pixels": limit,
        "jpeg_draft": jpeg_draft,
        "max_file_bytes": max_file_bytes,
    }
    fingerprint = _fingerprint(min_side, limit, jpeg_draft, max_file_bytes)
    state = Path(state_dir) if state_dir is not None else None
    cache = _load_scan_cache(state, fingerprint) if state is not None else {}

    results: list[ImageRecord | None] = []
    mtimes: list[int] = []
    todo: list[tuple[int, tuple[str, str, str, dict[str, Any]]]] = []
    for pool, folder in pools.items():
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"image pool {pool!r}: folder {os.fspath(root)!r} not found")
        for rel, path in iter_pool_files(root):
            abs_path = os.path.abspath(path)
            try:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            hit = cache.get(abs_path)
            if hit is not None and size >= 0 and hit[0] == size and hit[1] == mtime:
                results.append(replace(hit[2], pool=pool, rel_path=rel))
            else:
                todo.append((len(results), (pool, rel, os.fspath(path), kw)))
                results.append(None)
            mtimes.append(mtime)

    n_workers = default_workers() if workers is None else max(1, workers)
    n_workers = min(n_workers, len(todo) // _MIN_FILES_PER_WORKER or 1)
    tasks = [t for _, t in todo]
    if n_workers <= 1:
        fresh = [_scan_task(t) for t in tasks]
    else:
        # Threads, not processes: reading, hashing and decoding all release the GIL, so threads
        # scale (1.8x on 2 cores in bench/bench_images.py --manifest) with no worker start-up
        # (a preloaded forkserver pool cost ~0.6 s) and no pickling of records.
        with ThreadPoolExecutor(n_workers, thread_name_prefix="r2i-scan") as ex:
            fresh = list(ex.map(_scan_task, tasks))
    for (i, _), rec in zip(todo, fresh, strict=True):
        results[i] = rec
    per_file = [r for r in results if r is not None]
    if state is not None:
        _save_scan_cache(
            state,
            fingerprint,
            [(r, m) for r, m in zip(per_file, mtimes, strict=True) if m >= 0],
        )
    return _mark_duplicates(per_file)


# --------------------------------------------------------------------------------------------------
# Summaries, shards


def kept_records(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    return [r for r in records if r.kept]


def summarize(records: Sequence[ImageRecord]) -> dict[str, Any]:
    """Counts for the funnel: ``files`` / ``kept`` / ``dropped``, ``by_reason``, ``by_pool``."""
    by_reason = Counter(str(r.reason) for r in records if not r.kept)
    pools: dict[str, dict[str, Any]] = {}
    for r in records:
        p = pools.setdefault(r.pool, {"files": 0, "kept": 0, "dropped": 0, "by_reason": Counter()})
        p["files"] += 1
        if r.kept:
            p["kept"] += 1
        else:
            p["dropped"] += 1
            p["by_reason"][r.reason] += 1
    for p in pools.values():
        p["by_reason"] = dict(sorted(p["by_reason"].items()))
    n_kept = sum(1 for r in records if r.kept)
    return {
        "manifest_version": MANIFEST_VERSION,
        "files": len(records),
        "kept": n_kept,
        "dropped": len(records) - n_kept,
        "by_reason": dict(sorted(by_reason.items())),
        "by_pool": dict(sorted(pools.items())),
    }


def shard_of(record: ImageRecord | str, n_shards: int) -> int:
    """Shard index of a record (from its pool and relative path), or of a hex digest string."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if isinstance(record, ImageRecord):
        digest = hashlib.sha256(f"{record.pool}\0{record.rel_path}".encode()).hexdigest()
    else:
        digest = record
    return int(digest, 16) % n_shards


def shard_records(records: Iterable[ImageRecord], shard: int, n_shards: int) -> list[ImageRecord]:
    """Kept records of one shard, sorted by hash (the order shard files list them in)."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard must be in [0, {n_shards}), got {shard}")
    out = [r for r in records if r.kept and r.sha256 and shard_of(r, n_shards) == shard]
    out.sort(key=lambda r: r.sha256 or "")
    return out


def shard_path(out_dir: str | os.PathLike[str], shard: int) -> Path:
    return Path(out_dir) / f"shard-{shard:03d}.json"


def _shard_entry(r: ImageRecord) -> dict[str, Any]:
    return {
        "hash": r.sha256,
        "pool": r.pool,
        "rel_path": r.rel_path,
        "path": r.abs_path,
        "format": r.format,
        "width": r.width,
        "height": r.height,
    }


def _json_bytes(obj: Any) -> bytes:
    # Deterministic bytes (sorted keys, no timestamps): "unchanged" must mean byte-identical.
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_shard_lists(
    records: Sequence[ImageRecord], n_shards: int, out_dir: str | os.PathLike[str]
) -> dict[int, bool]:
    """Write ``shard-{i:03d}.json`` for every shard ``0 .. n_shards-1`` (empty shards too, so every
    expected Snakemake output exists) listing its kept images sorted by hash.

    Format: ``{"shard", "n_shards", "count", "images": [{"hash", "pool", "rel_path", "path",
    "format", "width", "height"}, ...]}`` with ``path`` absolute and the size EXIF-oriented; no
    timestamps, so identical input gives identical bytes.

    A file is replaced only if its bytes change; returns ``{shard: written}``. Shard files left from
    a larger ``n_shards`` are removed so no stale shard is picked up by a glob.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    groups: dict[int, list[ImageRecord]] = {i: [] for i in range(n_shards)}
    for r in records:
        if r.kept and r.sha256:
            groups[shard_of(r, n_shards)].append(r)
    changed: dict[int, bool] = {}
    for i, rs in groups.items():
        rs.sort(key=lambda r: r.sha256 or "")
        doc = {
            "shard": i,
            "n_shards": n_shards,
            "count": len(rs),
            "images": [_shard_entry(r) for r in rs],
        }
        changed[i] = atomic_write_bytes(
            shard_path(out_dir, i), _json_bytes(doc), only_if_changed=True
        )
    out = Path(out_dir)
    for f in out.iterdir():
        m = _SHARD_RE.match(f.name)
        if m and int(m.group(1)) >= n_shards:
            f.unlink()
    return changed


# --------------------------------------------------------------------------------------------------
# Manifest files


def summary_path_for(path: str | os.PathLike[str]) -> Path:
    """``manifest.parquet`` -> ``manifest.summary.json`` (next to it)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.summary.json")


def write_manifest(
    records: Sequence[ImageRecord],
    path: str | os.PathLike[str],
    *,
    summary_path: str | os.PathLike[str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Path:
    """Write records as parquet and a JSON summary (:func:`summarize` plus ``params``), atomically.

    The summary defaults to :func:`summary_path_for` ``(path)``; returns its path.
    """
    columns = {f.name: [getattr(r, f.name) for r in records] for f in fields(ImageRecord)}
    table = pa.Table.from_pydict(columns, schema=_PARQUET_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    spath = Path(summary_path) if summary_path is not None else summary_path_for(path)
    summary = summarize(records)
    if params:
        summary["params"] = dict(params)
    atomic_write_bytes(spath, _json_bytes(summary))
    return spath


def read_manifest(path: str | os.PathLike[str]) -> list[ImageRecord]:
    """Records from a parquet manifest written by :func:`write_manifest` (order preserved)."""
    table = read_parquet(path)
    meta = table.schema.metadata or {}
    version = meta.get(b"r2i_manifest_version")
    if version is not None and int(version) > MANIFEST_VERSION:
        raise ValueError(
            f"{path}: manifest version {int(version)} is newer than {MANIFEST_VERSION}"
        )
    names = {f.name for f in fields(ImageRecord)}
    return [
        ImageRecord(**{k: v for k, v in row.items() if k in names}) for row in table.to_pylist()
    ]


def build_manifest(
    pools: Mapping[str, str | os.PathLike[str]],
    *,
    manifest_path: str | os.PathLike[str],
    shard_dir: str | os.PathLike[str],
    n_shards: int,
    summary_path: str | os.PathLike[str] | None = None,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    jpeg_draft: bool = True,
) -> dict[str, Any]:
    """The manifest job in one call: scan, write shard lists, then manifest + summary.

    Shard lists are written first and the manifest last, so a job killed half-way leaves no new
    manifest claiming shards that were not written. Returns the summary (with the changed shards).
    """
    records = scan_pools(
        pools,
        min_side=min_side,
        workers=workers,
        max_pixels=max_pixels,
        jpeg_draft=jpeg_draft,
        state_dir=state_dir,
    )
    changed = write_shard_lists(records, n_shards, shard_dir)
    params = {
        "pools": {k: os.fspath(v) for k, v in pools.items()},
        "min_side": min_side,
        "max_pixels": images.get_max_pixels(),
        "n_shards": n_shards,
        "jpeg_draft": jpeg_draft,
    }
    spath = write_manifest(records, manifest_path, summary_path=summary_path, params=params)
    summary: dict[str, Any] = json.loads(spath.read_text(encoding="utf-8"))
    summary["shards_rewritten"] = sorted(i for i, w in changed.items() if w)
    return summary
