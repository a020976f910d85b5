"""Run a coroutine from synchronous code without paying for a repr of its result.

CPython's ``asyncio.run`` (3.11 and later; ``uvloop.run`` goes through the same ``asyncio.Runner``)
installs a SIGINT handler ``functools.partial(runner._on_sigint, main_task=task)`` and, when the
task is done, checks and restores it with ``signal.getsignal``/``signal.signal``. Both look the
handler up in the ``signal.Handlers`` enum; the failed lookup formats ``"%r is not a valid
Handlers"``, i.e. ``repr(partial)``, i.e. ``repr(task)``, which ends in ``reprlib.repr`` of the
task's *result*. ``reprlib`` shortens the string it returns but calls ``repr()`` on each instance
it meets, so a result holding every row of a shard (image bytes included) is formatted in full,
twice: measured at 0.5-1 s of CPU at the end of each synthesis job on the toy world, all of it
after the last model response, on the critical path of the DAG.

:func:`run` hands the result back through a closure instead, so the task's own result is
``None`` and the handler's repr is a few bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["run"]


def run(coro: Awaitable[T], *, use_uvloop: bool = False) -> T:
    """``asyncio.run(coro)`` (or ``uvloop.run`` when asked and installed), returning its result
    without the main task ever holding it (see the module docstring)."""
    box: list[Any] = []

    async def main() -> None:
        box.append(await coro)

    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main())
            return box[0]
    asyncio.run(main())
    return box[0]
