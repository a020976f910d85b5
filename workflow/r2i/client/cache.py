"""Persistent, content-addressed cache (and journal) of completed model calls.

Design constraints and how they are met:

* **Rerunning never re-sends a completed call**, even after the process was killed or outputs were
  deleted: a call is recorded as soon as its response is validated, one file per call.
* **No locks**, because the cache lives on network file systems shared by many SLURM jobs where
  ``flock`` is unreliable. Each record is written to a unique temporary file in the destination
  directory and then ``os.replace``-d into place, which is atomic on POSIX (including NFS within a
  directory): readers see either no file or a complete one. Two writers of the same key write
  equivalent content and the last rename wins, which is harmless.
* **Endpoint-independent keys**: the key hashes only what determines the model's answer (model,
  messages, sampling parameters, seed), not the base URL or port, so a relaunched server on a new
  port still hits the cache.
* **Corruption is a miss**: without fsync a power loss can leave an entry empty, truncated or
  with stale blocks. Every record carries a checksum (``check``: sha256 of the fields an answer
  is built from: key, texts, usage, model, latency) and is verified when read: an empty,
  truncated, unparseable, wrongly typed or mismatching record is logged, removed and treated as
  absent, so the call is sent again and the fresh result rewrites the entry. Never a crash,
  never a wrong answer. (Records written before checksums existed are accepted when they parse
  and have the right shape.)

Records hold the texts, usage, model, creation time, latency and a small request summary without
image bytes or headers (so no credentials can ever be stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CallCache", "cache_key", "cache_key_from_json", "canonical_json", "filesystem_type",
           "is_network_fs", "record_check"]

log = logging.getLogger("r2i.client")
T = TypeVar("T")


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8 (the cache-key serialisation).

    Changing what this function returns invalidates every existing cache. It returns exactly
    ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``;
    long strings that need no escaping (inline images: ``data:image/png;base64,...``) are
    spliced in as bytes instead of going through the encoder (see :func:`_spliced`).
    """
    big: list[bytes] = []
    small = _swap_long_strings(obj, big)
    text = _plain_json(small)
    if big:
        spliced = _spliced(text, big)
        if spliced is not None:
            return spliced
        return _plain_json(obj)
    return text


def _plain_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


#: strings at least this long are spliced (shorter ones cost the encoder nothing worth saving)
_SPLICE_MIN = 4096
#: bytes that ``json.dumps`` writes as they are: printable ASCII except ``"`` and ``\``
_JSON_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in (0x22, 0x5C))
#: quoted JSON bytes of recently seen long strings (the same image URL goes into many requests;
#: a ``str`` caches its own hash, so a hit costs a lookup)
_QUOTED: dict[str, bytes] = {}
_QUOTED_MAX = 64
_QUOTED_LOCK = threading.Lock()


def _quoted(s: str) -> bytes | None:
    """``json.dumps(s)`` as bytes when ``s`` needs no escaping at all, else None."""
    q = _QUOTED.get(s)
    if q is None:
        if not s.isascii():
            return None
        raw = s.encode("ascii")
        if raw.translate(None, _JSON_PLAIN):  # something json.dumps would escape
            return None
        q = b'"' + raw + b'"'
        with _QUOTED_LOCK:  # requests are serialised in the event loop and in worker threads
            if len(_QUOTED) >= _QUOTED_MAX:
                _QUOTED.pop(next(iter(_QUOTED)), None)
            _QUOTED[s] = q
    return q


def _swap_long_strings(obj: Any, big: list[bytes]) -> Any:
    """``obj`` with every long, escape-free string value replaced by a placeholder (a NUL
    character and the index of its quoted bytes, appended to ``big``); containers are copied only
    where something changed."""
    if isinstance(obj, str):
        if len(obj) >= _SPLICE_MIN:
            q = _quoted(obj)
            if q is not None:
                big.append(q)
                return f"\0{len(big) - 1}"
        return obj
    if isinstance(obj, dict):
        out = {k: _swap_long_strings(v, big) for k, v in obj.items()}
        return out if any(out[k] is not obj[k] for k in obj) else obj
    if isinstance(obj, list | tuple):
        items = [_swap_long_strings(v, big) for v in obj]
        return items if any(a is not b for a, b in zip(items, obj, strict=True)) else obj
    return obj


def _spliced(text: bytes, big: list[bytes]) -> bytes | None:
    """``text`` with each placeholder's JSON (a quote, backslash-u0000, ``i``, a quote) replaced
    by ``big[i]``; None if some placeholder does not occur exactly once (a real string that looks
    like one), in which case the caller encodes the original object instead. Spliced bytes hold
    no backslash, so they cannot form another placeholder."""
    for i, q in enumerate(big):
        token = b'"\\u0000%d"' % i
        if text.count(token) != 1:
            return None
        text = text.replace(token, q, 1)
    return text


def cache_key_from_json(
    *,
    model: str,
    messages_json: bytes,
    n: int,
    seed: int | None,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
) -> str:
    """:func:`cache_key` with the messages already serialised by :func:`canonical_json`.

    Hashes exactly the bytes ``canonical_json`` would produce for the whole payload (fields in
    sorted order), but lets the client serialise large inline images once for both the key and
    the request body.
    """
    # Two dumps calls instead of eight: this runs once per call on the hot path. Keys sort as
    # extra < max_tokens < messages < model < n < seed < temperature < top_p.
    head = _plain_json({"extra": dict(extra) if extra else None,
                "max_tokens": None if max_tokens is None else int(max_tokens)})
    tail = _plain_json({"model": model, "n": int(n), "seed": None if seed is None else int(seed),
                "temperature": None if temperature is None else float(temperature),
                "top_p": None if top_p is None else float(top_p)})
    h = hashlib.sha256(head[:-1])
    h.update(b',"messages":')
    h.update(messages_json)
    h.update(b",")
    h.update(tail[1:])
    return h.hexdigest()


def cache_key(
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    n: int,
    seed: int | None,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
) -> str:
    """sha256 hex digest of the canonical JSON of everything that determines a call's answer:
    ``{model, messages, n, seed, temperature, top_p, max_tokens, extra}``.

    ``temperature``/``top_p`` are normalised to floats so ``1`` and ``1.0`` give the same key;
    an empty ``extra`` counts as ``None``.
    """
    return cache_key_from_json(
        model=model, messages_json=canonical_json(list(messages)), n=n, seed=seed,
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, extra=extra,
    )


# File systems on which every metadata operation is a network round trip (mountinfo names).
_NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph",
               "glusterfs", "fuse", "9p", "afs", "panfs", "wekafs", "orangefs", "pvfs2")


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """Type of the file system holding ``path`` (from ``/proc/self/mountinfo``; Linux only)."""
    real = os.path.realpath(path)
    best, fstype = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                pre, _, post = line.partition(" - ")
                fields = pre.split()
                if len(fields) < 5 or not post:
                    continue
                mnt = fields[4].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, post.split()[0]
    except OSError:
        return None
    return fstype


def is_network_fs(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is on a network/cluster file system (NFS, Lustre, GPFS, FUSE, ...)."""
    t = filesystem_type(path)
    return t is not None and t.split(".")[0] in _NETWORK_FS


def record_check(rec: Mapping[str, Any]) -> str:
    """Checksum of the parts of a record that a cached answer is built from."""
    part = {k: rec.get(k) for k in ("key", "texts", "usage", "model", "latency_s")}
    return hashlib.sha256(_plain_json(part)).hexdigest()[:32]


def _record_problem(rec: Any, key: str) -> str | None:
    """Why ``rec`` (a parsed record) cannot be used for ``key``; ``None`` if it can."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("key") != key:
        return "key does not match the file name"
    texts = rec.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "texts is not a list of strings"
    usage = rec.get("usage")
    if usage is not None and (
        not isinstance(usage, dict)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in usage.values())
    ):
        return "usage is not a mapping of token counts"
    latency = rec.get("latency_s")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)):
        return "latency_s is not a number"
    if rec.get("model") is not None and not isinstance(rec["model"], str):
        return "model is not a string"
    if "check" in rec and rec["check"] != record_check(rec):
        return "checksum mismatch"
    return None


class CallCache:
    """Directory of completed calls, ``<dir>/<key[:2]>/<key>.json``.

    ``fsync=True`` additionally flushes each record to stable storage before the rename (survives
    power loss, not just a killed process); it is off by default because a lost record only costs
    a re-sent request, while fsync on a network file system costs milliseconds per call.

    ``offload`` decides whether the async API (:meth:`aget`/:meth:`aput`, used by the client)
    runs file I/O in a small thread pool instead of on the event loop. ``True``/``False`` force
    it for reads and writes. ``None`` (default) decides from measurements: on network file systems
    (NFS, Lustre, GPFS, ...) every open/rename is a round trip that would stall all requests in
    flight, so both go to threads. On a local disk a lookup costs ~10 us and a write usually
    ~50 us, less than a thread hop, so both stay inline, but writes move to threads as soon as they
    turn out slow (creating an inode can cost milliseconds of kernel time on a busy disk).
    """

    #: Inline writes slower than this on average make an auto-mode cache move writes to threads.
    SLOW_INLINE_S = 0.0003
    #: I/O threads: many for network file systems (each operation waits on a round trip), few
    #: for a slow local disk (the cost is kernel CPU; more threads only fight over the GIL).
    IO_THREADS_REMOTE = 8
    IO_THREADS_LOCAL = 2

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False,
                 offload: bool | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._root = str(self.dir)
        self.fsync = fsync
        self._auto = offload is None
        remote = is_network_fs(self.dir) if offload is None else offload
        self.offload_reads: bool = remote
        self.offload_writes: bool = remote
        self._io_threads = self.IO_THREADS_REMOTE if remote else self.IO_THREADS_LOCAL
        self._made_dirs: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._inline_samples: list[float] = []
        #: Damaged records found (and removed) by this instance.
        self.damaged = 0

    def __repr__(self) -> str:
        return f"CallCache({self._root!r})"

    def path(self, key: str) -> Path:
        """Where the record for ``key`` lives."""
        return Path(self._path(key))

    def _path(self, key: str) -> str:
        # Plain string joins: pathlib costs more than the write itself on the hot path.
        return f"{self._root}/{key[:2]}/{key}.json"

    # -- synchronous API -------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """Return the stored record for ``key``, or ``None`` if absent or damaged.

        A damaged record (empty, truncated, not JSON, wrong shape, checksum mismatch) is logged
        and removed, so it reads as absent and the next :meth:`put` writes a good one.
        """
        p = self._path(key)
        try:
            with open(p, "rb") as fh:
                raw = fh.read()
                ino = os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            return None
        except OSError as exc:  # e.g. a stale NFS handle: treat as a miss, the call is re-sent
            log.warning("cache read failed for %s (treated as miss): %s", p, exc)
            return None
        if not raw:
            return self._damaged(p, ino, "empty file")
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._damaged(p, ino, f"not valid JSON ({len(raw)} bytes; truncated?)")
        problem = _record_problem(rec, key)
        if problem is not None:
            return self._damaged(p, ino, problem)
        return rec  # type: ignore[no-any-return]

    def _damaged(self, path: str, ino: int, why: str) -> None:
        self.damaged += 1
        log.warning("damaged cache record %s: %s; treated as absent, removed, and rewritten "
                    "when the call completes", path, why)
        # Remove it only if it is still the file we read: another job may have just replaced
        # it with a good record (rename), which must stay.
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == ino:
                os.unlink(path)
        return None

    def put(self, key: str, record: Mapping[str, Any]) -> str:
        """Atomically store ``record`` (must contain ``texts``) under ``key``; returns the path."""
        rec = dict(record)
        rec["key"] = key
        rec["check"] = record_check(rec)
        data = json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        sub = f"{self._root}/{key[:2]}"
        if sub not in self._made_dirs:
            os.makedirs(sub, exist_ok=True)
            self._made_dirs.add(sub)
        final = f"{sub}/{key}.json"
        # Unique per process *and* per write, so concurrent writers never share a temp file;
        # the leading dot and .tmp suffix keep strays from a killed writer out of keys().
        tmp = f"{sub}/.{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return final

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def keys(self) -> Iterator[str]:
        """Keys of all completed records (temp files of unfinished writes are skipped)."""
        for sub in sorted(self.dir.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.glob("*.json")):
                    if not f.name.startswith("."):
                        yield f.stem

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def cleanup_temp(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files left by killed writers; returns how many were removed.

        Only files older than ``older_than_s`` are touched, because on a shared file system a
        younger one may belong to a writer on another node that is still running.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.dir.glob("??/.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

    # -- async API -------------------------------------------------------------------------
    async def aget(self, key: str) -> dict[str, Any] | None:
        """:meth:`get` without blocking the event loop on slow file systems."""
        if self.offload_reads:
            return await self._in_thread(self.get, key)
        return self.get(key)

    async def aput(self, key: str, record: Mapping[str, Any]) -> str:
        """:meth:`put` without blocking the event loop on slow file systems."""
        if self.offload_writes:
            return await self._in_thread(self.put, key, record)
        if not self._auto:
            return self.put(key, record)
        t0 = time.perf_counter()
        try:
            return self.put(key, record)
        finally:
            self._inline_samples.append(time.perf_counter() - t0)
            if len(self._inline_samples) >= 16:
                # The median ignores writes that only looked slow because this process was
                # preempted (shared machines), but catches a disk where every create is slow.
                median = sorted(self._inline_samples)[len(self._inline_samples) // 2]
                if median > self.SLOW_INLINE_S:
                    log.info("cache %s: inline writes are slow (median %.2f ms), moving them "
                             "to threads", self._root, 1e3 * median)
                    self.offload_writes = True
                self._inline_samples.clear()

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            # Own pool: the loop's default executor also serves DNS lookups for aiohttp.
            self._pool = ThreadPoolExecutor(self._io_threads, thread_name_prefix="r2i-cache")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
