"""Supervisor of a launched model server: the server dies with the job that started it.

Run by :func:`r2i.client.endpoint.open_endpoint` as ``python supervisor.py FD GRACE_S COMMAND``
(as a plain script, so it starts without importing the r2i package). It is started in a new
session, so it leads its own process group, and runs ``COMMAND`` through the shell in that
same group. ``FD`` is the read end of a pipe whose only write end the job holds.

Why a pipe: the kernel closes a process's file descriptors however it dies (``SIGKILL``, the
OOM killer, a crash), so end-of-file on the pipe means "the job is gone" with no polling and no
pid-reuse race. A parent-death signal (``PR_SET_PDEATHSIG``) was rejected: it fires when the
*thread* that forked the child exits, reaches only the direct child (not the workers a vLLM
server forks), and is cleared by a set-uid exec.

On end-of-file or ``SIGTERM`` (the job's normal stop) the supervisor sends ``SIGTERM`` to the
whole group, waits up to ``GRACE_S`` for it, then sends ``SIGKILL`` to the group (itself last).
When the server exits on its own, whatever it left in the group is stopped the same way and the
supervisor exits with the server's exit code, so the job still sees why startup failed. On
Linux the supervisor is also a child subreaper: workers whose parent exits are re-parented to
it instead of init, so it can wait for them.

Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Best effort (Linux): orphaned descendants are re-parented to us, not to init."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> bool:
    """Reap finished children; True while any child of ours is still alive."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _children() -> list[int]:
    """Pids of our live children (Linux ``/proc``; empty elsewhere)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children", encoding="ascii") as fh:
                pids.extend(int(p) for p in fh.read().split())
    return pids


def _stop_group(grace_s: float) -> None:
    """SIGTERM our process group, wait for our children up to ``grace_s``, then SIGKILL it."""
    pgid = os.getpgrp()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _reap():
        time.sleep(0.05)
    sys.stdout.flush()
    os.killpg(pgid, signal.SIGKILL)  # includes this process: nothing of the group survives


def main(argv: list[str]) -> int:
    fd, grace_s, command = int(argv[0]), float(argv[1]), argv[2]
    stop_requested = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_term)
    _become_subreaper()
    # Same process group as this supervisor (no new session): one killpg reaches everything.
    # close_fds (the default) keeps the pipe out of the server, so only the job holds it open.
    server = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL)
    while True:
        if stop_requested:
            break
        try:
            readable, _, _ = select.select([fd], [], [], 0.5)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
            continue
        if readable and not os.read(fd, 64):
            break  # end of file: the job is gone (or closed the pipe to stop us)
        code = server.poll()
        if code is not None:
            # The server exited by itself: stop what it left behind and report its exit code.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgrp(), signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _reap():
                time.sleep(0.05)
            for pid in _children():  # still there after the grace period
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap()
            return code if code >= 0 else 128 - code
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stop_group(grace_s)
    return 0  # pragma: no cover - the group SIGKILL ends this process first


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
