"""Counters for one or more :class:`~r2i.client.ModelClient` instances.

Plain counters (no locks) because every client runs on one asyncio event loop; pass the same
:class:`ClientStats` to several clients to aggregate them. :func:`count_into` adds further
counters for the calls made inside a block (and the tasks it starts): one job that runs several
synthesis stages at once keeps per-stage figures that way, while the client's own
:class:`ClientStats` still sums everything.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ClientStats", "StatsSink", "count_into"]

_EXTRA: ContextVar[tuple[ClientStats, ...]] = ContextVar("r2i_stats_sinks", default=())


@contextlib.contextmanager
def count_into(*stats: ClientStats) -> Iterator[None]:
    """Count the calls made in this block (and in tasks created inside it) into ``stats`` too.

    Tasks copy the current context when they are created, so a stage that starts its item tasks
    inside the block has them counted even after the block is left.
    """
    token = _EXTRA.set(_EXTRA.get() + tuple(stats))
    try:
        yield
    finally:
        _EXTRA.reset(token)


def current_sinks() -> tuple[ClientStats, ...]:
    return _EXTRA.get()


class _HasStats(Protocol):
    stats: ClientStats


@dataclass
class ClientStats:
    """What the client did, for logs, reports and tests.

    ``requests_sent`` counts HTTP requests (including retries); ``calls`` counts ``chat`` calls
    (a ``supports_n=False`` call with ``n=4`` is one call but four sub-calls); ``cache_hits`` and
    ``dedup_hits`` count (sub-)calls answered without a request; ``total_latency_s`` sums the wall
    time of calls that were actually sent (including their retries and backoff).
    """

    calls: int = 0
    requests_sent: int = 0
    completed: int = 0
    cache_hits: int = 0
    dedup_hits: int = 0
    retries: int = 0
    retries_by_reason: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_latency_s: float = 0.0
    errors: int = 0
    errors_by_reason: Counter[str] = field(default_factory=Counter)
    # what the calls answered from the cache cost when they were first made (for cost reports)
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    cached_latency_s: float = 0.0

    def add_cached(self, usage: dict[str, Any], latency_s: float) -> None:
        """Count the original usage and latency of a call answered from the cache."""
        self.cached_prompt_tokens += int(usage.get("prompt_tokens", 0) or 0)
        self.cached_completion_tokens += int(usage.get("completion_tokens", 0) or 0)
        self.cached_latency_s += latency_s

    def summary(self) -> str:
        """One log line: calls, cache hits, retries and throttling by reason, errors, tokens."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.retries_by_reason.items()))
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_reason.items()))
        return (f"{self.calls} calls ({self.cache_hits} from cache, {self.requests_sent} HTTP "
                f"requests), {self.retries} retries{f' ({reasons})' if reasons else ''}, "
                f"{self.throttled} throttled (429), {self.errors} failed"
                f"{f' ({errors})' if errors else ''}, {self.prompt_tokens} prompt + "
                f"{self.completion_tokens} completion tokens")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot."""
        return {
            "calls": self.calls,
            "requests_sent": self.requests_sent,
            "completed": self.completed,
            "cache_hits": self.cache_hits,
            "dedup_hits": self.dedup_hits,
            "retries": self.retries,
            "retries_by_reason": dict(sorted(self.retries_by_reason.items())),
            "throttled": self.throttled,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_latency_s": round(self.total_latency_s, 6),
            "mean_latency_s": round(self.total_latency_s / self.completed, 6)
            if self.completed
            else None,
            "errors": self.errors,
            "errors_by_reason": dict(sorted(self.errors_by_reason.items())),
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cached_completion_tokens": self.cached_completion_tokens,
            "cached_latency_s": round(self.cached_latency_s, 6),
        }


class StatsSink:
    """Adds to the owner's :class:`ClientStats` and to those of :func:`count_into` in effect."""

    __slots__ = ("_owner",)

    def __init__(self, owner: _HasStats | ClientStats) -> None:
        self._owner = owner

    def _targets(self) -> list[ClientStats]:
        own = self._owner if isinstance(self._owner, ClientStats) else self._owner.stats
        extra = _EXTRA.get()
        return [own, *(s for s in extra if s is not own)]

    def add(self, **amounts: float) -> None:
        for st in self._targets():
            for name, value in amounts.items():
                setattr(st, name, getattr(st, name) + value)

    def reason(self, counter: str, key: str) -> None:
        for st in self._targets():
            getattr(st, counter)[key] += 1
