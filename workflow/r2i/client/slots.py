"""A request limit shared by every process on a machine that talks to one endpoint.

Several Snakemake jobs (one per shard) often drive the same standing server (``base_url``). Each
job's client bounds its own requests in flight by ``max_concurrency``, so without coordination
``k`` parallel jobs send ``k x max_concurrency`` and a server sized for ``max_concurrency`` starts
answering 429 or timing out. :class:`SharedSlots` makes the limit global: ``n`` lock files in a
directory named after the endpoint's URL, one per request slot; a request holds an exclusive
``flock`` on one of them while it is in flight.

Why lock files: a lock belongs to an open file descriptor, so the kernel drops it when the process
dies in any way (``kill -9`` included): a killed job can never leak a slot, and there is no
server or daemon to start or to clean up. Costs: one non-blocking ``flock`` per free slot tried.
Waiting requests of a process are queued locally (FIFO) and a single poller per process looks for
free slots every ``poll_s``; every process polls the same way, so jobs share the server roughly
evenly, and a freed slot is idle for at most one poll interval (milliseconds, against model
latencies of seconds).

The interval is 10 ms. While the server is full every waiting process polls: a poll that finds
nothing tries every slot (~90 us of CPU for 32 slots) and each wake-up of the event loop costs
0.2-0.4 ms of CPU on these VMs. Measured with all slots held by another process, one waiting
process spent 10.5 % of a core at 3 ms and 4.8 % at 10 ms; four jobs waiting through the whole
busy window of a run took that CPU from the jobs and a co-located server. With ``k`` jobs
waiting, a freed slot is picked up after ``10 / (k + 1)`` ms on average: 0.2-1 % of a 0.5 s
request.

Scope: the processes that see the same directory. The default (``/tmp/r2i-slots-<uid>``) is
per machine; on a cluster, jobs on different nodes only share the limit when ``slot_dir`` points
to a file system with working POSIX locks (NFSv4, GPFS, Lustre mounted with ``-o flock``).
Where ``flock`` is not supported the limiter logs a warning once and steps aside, leaving the
per-process limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import random
from pathlib import Path

__all__ = ["SharedSlots", "default_slot_dir", "slot_dir_for"]

log = logging.getLogger("r2i.client")


def default_slot_dir() -> Path:
    """``/tmp/r2i-slots-<uid>``: node-local, the same for every job of this user."""
    return Path("/tmp") / f"r2i-slots-{os.getuid()}"


def slot_dir_for(root: str | os.PathLike[str] | None, base_url: str) -> Path:
    """The slot directory of one endpoint URL under ``root`` (default: :func:`default_slot_dir`)."""
    digest = hashlib.sha256(base_url.encode("utf-8")).hexdigest()[:20]
    return (Path(root) if root is not None else default_slot_dir()) / digest


class SharedSlots:
    """``n`` request slots shared through lock files in ``directory`` (see the module docstring).

    Use ``slot = await slots.acquire()`` ... ``slots.release(slot)``, or ``async with
    slots.hold():``. One instance per process and endpoint; it must be used from one event loop.
    """

    def __init__(self, directory: str | os.PathLike[str], n: int, *, poll_s: float = 0.01,
                 label: str = "") -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.directory = Path(directory)
        self.n = n
        self.poll_s = poll_s
        self.label = label or str(self.directory)
        self.disabled = False
        self._fds: list[int] = []
        self._held: set[int] = set()
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()
        self._poller: asyncio.Task[None] | None = None
        self._rng = random.Random()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for i in range(n):
                fd = os.open(self.directory / f"slot-{i:04d}", os.O_RDWR | os.O_CREAT, 0o600)
                self._fds.append(fd)
        except OSError as exc:
            self._disable(f"cannot create lock files in {self.directory}: {exc}")

    # -- slots -------------------------------------------------------------------------------
    def _disable(self, why: str) -> None:
        if not self.disabled:
            log.warning("shared request limit for %s disabled (%s); each job keeps its own "
                        "max_concurrency", self.label, why)
        self.disabled = True

    def _try_acquire(self) -> int | None:
        """Lock one free slot without blocking; ``None`` if all are taken (or disabled: -1)."""
        if self.disabled:
            return -1
        start = self._rng.randrange(self.n)
        for k in range(self.n):
            i = (start + k) % self.n
            if i in self._held:
                continue
            try:
                fcntl.flock(self._fds[i], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    continue
                self._disable(f"flock failed: {exc}")
                return -1
            self._held.add(i)
            return i
        return None

    async def acquire(self) -> int:
        """Wait for a slot; returns its index (``-1`` when the limiter is disabled)."""
        if not self._waiters:
            slot = self._try_acquire()
            if slot is not None:
                return slot
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # got a slot just as we were cancelled
            raise

    async def _poll(self) -> None:
        while self._waiters:
            while self._waiters and self._waiters[0].done():
                self._waiters.popleft()  # cancelled waiters
            if not self._waiters:
                break
            slot = self._try_acquire()
            if slot is None:
                await asyncio.sleep(self.poll_s)
                continue
            fut = self._waiters.popleft()
            if fut.done():
                self.release(slot)
            else:
                fut.set_result(slot)

    def release(self, slot: int) -> None:
        if slot < 0 or slot not in self._held:
            return
        self._held.discard(slot)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fds[slot], fcntl.LOCK_UN)

    @contextlib.asynccontextmanager
    async def hold(self):  # type: ignore[no-untyped-def]
        slot = await self.acquire()
        try:
            yield slot
        finally:
            self.release(slot)

    @property
    def held(self) -> int:
        """Slots this process holds now."""
        return len(self._held)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for fut in self._waiters:
            fut.cancel()
        self._waiters.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops its lock
        self._fds.clear()
        self._held.clear()
        self.disabled = True
