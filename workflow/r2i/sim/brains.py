"""What the simulated server answers: the ``Brain`` protocol and the trivial ``EchoBrain``.

TEST DOUBLES / OFFLINE DEMO. Brains are not models; they produce deterministic text so that the
pipeline and the client can be exercised without GPUs or weights. The server
(:mod:`r2i.sim.server`) owns the transport (HTTP, latency, injected faults, counters); a brain
only maps a validated request to ``n`` texts.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

__all__ = ["SIM_MODELS", "Brain", "EchoBrain", "last_user_text"]

#: Model names served by the simulator (docs/interfaces.md).
SIM_MODELS = ("sim-teacher-a", "sim-teacher-b", "sim-llm", "sim-student", "sim-judge")


@runtime_checkable
class Brain(Protocol):
    """Maps one chat request to ``n`` completion texts.

    ``seed`` is the request's seed (``None`` if absent); sample ``i`` of a request should depend
    on ``seed + i`` only, so that one request with ``n`` samples and ``n`` requests with seeds
    ``seed, seed+1, ...`` give the same texts (what the client does for ``supports_n=False``).
    ``params`` holds the remaining body fields (temperature, top_p, max_tokens, ...).

    Optional attributes read by the server: ``models`` (names for ``GET /v1/models``) and
    ``run_in_thread`` (default true: ``complete`` runs in a single worker thread so a brain that
    decodes images does not stall the event loop; cheap brains set it false).
    """

    def complete(
        self, model: str, messages: list[dict[str, Any]], n: int, seed: int | None,
        params: dict[str, Any],
    ) -> list[str]: ...


def last_user_text(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """Text of the last user message (text parts joined) and its number of image parts."""
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content, 0
        texts: list[str] = []
        images = 0
        for part in content or ():
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                images += 1
        return "\n".join(texts), images
    return "", 0


class EchoBrain:
    """Deterministic echo: ``echo[<model>] seed=<s> h=<hash> images=<k>: <last user text>``.

    The hash mixes model, per-sample seed and text, so tests can check that a result belongs to
    exactly that request. Any model name is accepted. Used by the client tests and benchmark.
    """

    models = SIM_MODELS
    run_in_thread = False
    max_echo_chars = 200

    def complete(
        self, model: str, messages: list[dict[str, Any]], n: int, seed: int | None,
        params: dict[str, Any],
    ) -> list[str]:
        text, images = last_user_text(messages)
        if seed is None:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF
        out = []
        for i in range(n):
            s = seed + i
            h = hashlib.sha256(f"{model}\x1f{s}\x1f{text}".encode()).hexdigest()[:12]
            out.append(f"echo[{model}] seed={s} h={h} images={images}: {text[: self.max_echo_chars]}")
        return out
