"""Bringing an endpoint up (or checking it is up) for the duration of a job.

``open_endpoint(cfg)`` either checks an existing ``base_url`` or launches the configured command
(vLLM on a GPU node, the simulator locally) on a free loopback port, waits until it is healthy,
yields its base URL, and always stops it again, killing the whole process group so that worker
processes a server forks (vLLM engine cores, tokenizer pools) cannot outlive the job.

A launched server runs under a small supervisor process (:mod:`r2i.client.supervisor`) that
holds the read end of a pipe whose write end only the job holds: however the job dies (even
``SIGKILL``), the kernel closes the pipe and the supervisor stops the server's whole process
group, so no server is left holding GPUs after its job (docs/cluster.md explains the choice).

A ``base_url`` endpoint that refuses connections (nothing listens there, or the host name does
not resolve) is an error within seconds; only launched servers, which may still be loading
weights, get the long ``startup_timeout_s``.

Each job writes its launched servers' output to its own log file, named after the job's log
(see :func:`endpoint_log_path`), and the job's log names that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import IO, Any, TypeVar

from .config import EndpointConfig
from .errors import EndpointStartError, api_key_from_env, redact

__all__ = ["endpoint_log_path", "free_port", "job_log_file", "open_endpoint", "run_async"]

log = logging.getLogger("r2i.client")
T = TypeVar("T")

_PROBE_TIMEOUT_S = 5.0  # per health probe
#: A ``base_url`` endpoint that refuses connections for this long is an error (a short grace
#: covers a server that is being restarted, not one that is not there).
UNREACHABLE_GRACE_S = 3.0
_SUPERVISOR = str(Path(__file__).with_name("supervisor.py"))


def job_log_file() -> Path | None:
    """The job's own log file: the first file handler on the root logger (or ``None``).

    Rule scripts log to their Snakemake ``log:`` file through a root ``logging.FileHandler``
    (``r2i.joblog.setup_logging``), so this names the job without the caller passing it.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def endpoint_log_path(log_dir: str | os.PathLike[str], endpoint: str,
                      job_log: str | os.PathLike[str] | None = None) -> Path:
    """Where one job's launched ``endpoint`` writes its output: one file per job and endpoint.

    Next to the job's own log (``job_log``, default :func:`job_log_file`), named after it:
    ``results/logs/<run>/eval/m/b/full.log`` gives ``.../eval/m/b/full.endpoint-<endpoint>.log``
    (the synthesis jobs use the same scheme: ``shards/003/synthesize.endpoint-<name>.log``), so
    jobs never share a file and an error tail only ever shows this job's server. Without a job
    log (library use) the file goes to ``log_dir``, named with the process id.
    """
    job = Path(job_log) if job_log is not None else job_log_file()
    if job is None:
        return Path(log_dir) / f"endpoint-{endpoint}-pid{os.getpid()}.log"
    return job.with_suffix("").with_name(f"{job.stem}.endpoint-{endpoint}.log")


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (the OS picks it; tiny race until the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_async(coro: Awaitable[T], *, use_uvloop: bool = True) -> T:
    """Run ``coro`` to completion from synchronous code (scripts, Snakemake ``run:`` blocks).

    Uses uvloop when installed: its transports cost less CPU per request than the stdlib loop,
    which is what limits throughput at hundreds of concurrent requests on a small CPU allocation.
    The result is not formatted at the end of the run (:mod:`r2i.asyncrun`).
    """
    from r2i.asyncrun import run

    return run(coro, use_uvloop=use_uvloop)


async def _probe(session: Any, base: str, cfg: EndpointConfig,
                 api_key: str | None) -> tuple[bool, str, bool]:
    """One health probe: (healthy?, why not, unreachable?).

    ``health_path`` first; a 404/405 there means the server has no health route (hosted APIs), so
    ``GET /v1/models`` decides instead. 401/403 on that is fatal: waiting will not fix a key.
    *Unreachable* means the connection itself failed (refused, host name not resolved, no route),
    as opposed to a server that answers but is not ready yet.
    """
    import aiohttp  # imported here: only jobs that reach a server pay for it

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    timeout = aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)
    try:
        async with session.get(base + cfg.health_path, timeout=timeout) as r:
            if r.status == 200:
                return True, "", False
            if r.status not in (404, 405):
                return False, f"{cfg.health_path} returned HTTP {r.status}", False
        async with session.get(base + "/v1/models", headers=headers, timeout=timeout) as r:
            if r.status == 200:
                return True, "", False
            if r.status in (401, 403):
                raise EndpointStartError(
                    f"endpoint {cfg.name!r}: /v1/models rejected the credentials (HTTP {r.status});"
                    f" check the variable named by api_key_env ({cfg.api_key_env})"
                )
            return False, f"/v1/models returned HTTP {r.status}", False
    except aiohttp.ClientConnectorError as exc:
        return False, f"{type(exc).__name__}: {exc}", True
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return False, f"{type(exc).__name__}: {exc}", False


def _tail(path: Path, secret: str | None, lines: int = 40, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines (at most ``max_bytes``) of a log, with ``secret`` redacted.

    Redacts before cutting: the window is read with ``len(secret)`` extra bytes in front and cut
    only after redaction, so a key that straddles the cut cannot leave its tail in the output.
    """
    extra = len(secret.encode()) if secret else 0
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - max_bytes - extra)
            fh.seek(start)
            raw = fh.read()
    except OSError:
        return "(no log)"
    if not raw:
        return "(empty log)"
    text = redact(raw.decode("utf-8", "replace"), secret, limit=None)
    # When the window starts inside the file, its first line is cut somewhere in the middle.
    kept = text.splitlines()[1:] if start > 0 else text.splitlines()
    return redact("\n".join(kept[-lines:]), secret)


async def _wait_healthy(base: str, cfg: EndpointConfig, api_key: str | None,
                        proc: subprocess.Popen[bytes] | None, log_path: Path | None) -> None:
    """Wait until ``base`` is healthy.

    A launched server (``proc``) gets ``startup_timeout_s``: it may be loading weights for
    minutes. A ``base_url`` endpoint must already run: if connecting fails for
    :data:`UNREACHABLE_GRACE_S` it is an error at once; a server that answers but is not ready
    (e.g. HTTP 503 while a standing vLLM loads) still gets the full wait.
    """
    started = time.monotonic()
    deadline = started + cfg.startup_timeout_s
    delay = 0.05
    why = ""
    last_log = started
    import aiohttp  # imported here: only jobs that reach a server pay for it (~0.3 s)

    async with aiohttp.ClientSession() as session:
        while True:
            if proc is not None and proc.poll() is not None:
                raise EndpointStartError(
                    f"endpoint {cfg.name!r}: launched process exited with code {proc.returncode} "
                    f"before becoming healthy; log {log_path} ends with:\n"
                    f"{_tail(log_path, api_key) if log_path else ''}"
                )
            ok, why, unreachable = await _probe(session, base, cfg, api_key)
            if ok:
                return
            now = time.monotonic()
            if proc is None and unreachable and now - started >= UNREACHABLE_GRACE_S:
                raise EndpointStartError(
                    f"endpoint {cfg.name!r}: cannot connect to base_url {base} ({redact(why, api_key)}); "
                    f"nothing is listening there. Start the server or fix endpoints.{cfg.name}."
                    f"base_url (only launched endpoints wait startup_timeout_s for a server to load)"
                )
            if now >= deadline:
                tail = f"; log {log_path} ends with:\n{_tail(log_path, api_key)}" if log_path else ""
                raise EndpointStartError(
                    f"endpoint {cfg.name!r} at {base} not healthy after "
                    f"{cfg.startup_timeout_s:g} s ({redact(why, api_key)}){tail}"
                )
            if now - last_log > 30:
                log.warning("endpoint=%s still waiting for %s: %s", cfg.name, base, why)
                last_log = now
            await asyncio.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 1.5, 2.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a member changed uid; treat as alive
        return True
    return True


def _launch_env() -> dict[str, str]:
    """The job's environment with this interpreter's ``bin`` first on PATH.

    A launch command like ``r2i-sim-server ...`` or ``vllm serve ...`` then finds the tools of the
    environment the job runs in (a venv, a conda env) even when it was not activated.
    """
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _stop(proc: subprocess.Popen[bytes], grace_s: float, lifeline: int | None = None) -> None:
    """SIGTERM the whole process group; SIGKILL whatever is left after ``grace_s``.

    Closes the supervisor's ``lifeline`` pipe first (which alone makes it stop the server), then
    signals the group directly as well. Waits for the group, not just the leader: a wrapper shell
    exits at once on SIGTERM while the server it started is still shutting down gracefully.
    """
    if lifeline is not None:
        with contextlib.suppress(OSError):
            os.close(lifeline)
    pgid = proc.pid  # start_new_session=True: the supervisor's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


@contextlib.asynccontextmanager
async def open_endpoint(
    cfg: EndpointConfig,
    log_path: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    stop_grace_s: float = 5.0,
) -> AsyncIterator[str]:
    """Yield the base URL of a healthy endpoint for ``cfg``; stop it afterwards if launched.

    For ``launch`` endpoints the command template gets ``{port}`` replaced by a free loopback
    port and runs through the shell in its own process group under a supervisor that stops the
    group when this process dies (module docstring), with stdout/stderr appended to ``log_path``
    (default: a temporary file, deleted after a clean stop and kept, with its path in the error,
    when startup fails; :func:`endpoint_log_path` gives the per-job name the workflow uses). The
    log starts with a line naming the job's own log, and the job's log names the endpoint log.
    If the process exits before it is healthy the error contains the tail of that log; on a port
    clash (the small race between picking and binding a port) the launch is retried on another
    port.
    """
    api_key = api_key_from_env(cfg.api_key_env, cfg.name) if cfg.api_key_env else None
    if cfg.base_url is not None:
        await _wait_healthy(cfg.base_url, cfg, api_key, None, None)
        yield cfg.base_url
        return

    assert cfg.launch is not None
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix=f"r2i-endpoint-{cfg.name}-", suffix=".log")
        os.close(fd)
        path = Path(tmp)
    else:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)

    proc: subprocess.Popen[bytes] | None = None
    lifeline: int | None = None
    base = ""
    job_log = job_log_file()
    for try_no in range(3):
        port = free_port(host)
        base = f"http://{host}:{port}"
        # str.replace, not str.format: the command may contain other braces (JSON arguments).
        cmd = cfg.launch.replace("{port}", str(port))
        log.info("endpoint=%s launching on port %d (log %s)", cfg.name, port, path)
        logf: IO[bytes]
        # os.pipe() descriptors are not inherited by other children; only the supervisor gets
        # the read end (pass_fds), so the write end's last holder is this process.
        read_end, lifeline = os.pipe()
        try:
            with open(path, "ab") as logf:
                logf.write(
                    f"[r2i] {time.strftime('%Y-%m-%d %H:%M:%S')} job log: {job_log or '-'} "
                    f"(pid {os.getpid()})\n[r2i] launching: {redact(cmd, api_key)}\n".encode()
                )
                logf.flush()
                proc = subprocess.Popen(
                    [sys.executable, _SUPERVISOR, str(read_end), f"{stop_grace_s:g}", cmd],
                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, env=_launch_env(), pass_fds=(read_end,),
                )
        except BaseException:
            os.close(lifeline)
            raise
        finally:
            os.close(read_end)
        try:
            await _wait_healthy(base, cfg, api_key, proc, path)
            break
        except EndpointStartError:
            _stop(proc, stop_grace_s, lifeline)
            if try_no < 2 and "address already in use" in _tail(path, api_key).lower():
                log.warning("endpoint=%s port %d was taken, retrying", cfg.name, port)
                continue
            raise
        except BaseException:
            _stop(proc, stop_grace_s, lifeline)
            raise
    assert proc is not None
    log.info("endpoint=%s healthy at %s (pid %d)", cfg.name, base, proc.pid)
    try:
        yield base
    finally:
        await asyncio.get_running_loop().run_in_executor(None, _stop, proc, stop_grace_s, lifeline)
        log.info("endpoint=%s stopped", cfg.name)
        if log_path is None:
            with contextlib.suppress(OSError):
                path.unlink()
