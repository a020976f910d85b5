"""Exceptions raised by the model client.

Both exceptions build their message only from values the client controls (endpoint name, model
name, a short reason) and pass every free-text part through :func:`redact`, so that an API key can
never leak into a traceback, a Snakemake log or a CI report, even if a server echoes the
``Authorization`` header back in an error body.
"""

from __future__ import annotations

import os
import re

__all__ = ["EndpointStartError", "ModelCallError", "redact", "redacted_excerpt"]

# Things that look like bearer credentials. Used in addition to exact redaction of the known key,
# because an error body may echo a key we never held (e.g. a proxy's own token).
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{4,}")
_MAX_REASON_CHARS = 500


def redact(text: str, *secrets: str | None, limit: int | None = _MAX_REASON_CHARS) -> str:
    """Remove ``secrets`` and anything shaped like ``Bearer <token>`` from ``text``.

    Also truncates very long texts to ``limit`` characters (``None``: no cut), always *after*
    redacting: reasons come from server bodies, which can be large, and cutting first could
    split a key and leave its first part in the text.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = _BEARER_RE.sub(r"\1[REDACTED]", text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text


def redacted_excerpt(body: bytes, limit: int, *secrets: str | None) -> str:
    """The first ``limit`` characters of a response ``body``, redacted before it is cut.

    Decodes (and redacts) only as much of the body as the excerpt can need: ``limit`` plus the
    longest secret, so a key that starts before the cut is still seen whole.
    """
    longest = max((len(s) for s in secrets if s), default=0)
    window = body[: 4 * (limit + longest) + 64].decode("utf-8", "replace")
    return redact(window, *secrets, limit=limit)


def api_key_from_env(env_var: str | None, endpoint: str = "?", model: str = "?") -> str | None:
    """Return the value of ``env_var`` (``None`` if no variable is configured).

    Missing variables are an error naming the variable, never its value.
    """
    if not env_var:
        return None
    value = os.environ.get(env_var)
    if not value:
        raise ModelCallError(
            endpoint=endpoint,
            model=model,
            reason=f"environment variable {env_var} (api_key_env) is not set or empty",
            attempts=0,
        )
    return value


class ModelCallError(RuntimeError):
    """A chat call failed for good (retries exhausted or a non-retryable error).

    Attributes mirror the constructor so callers can record the failure in the pipeline's funnel.
    """

    def __init__(self, endpoint: str, model: str, reason: str, attempts: int) -> None:
        self.endpoint = endpoint
        self.model = model
        self.reason = redact(reason)
        self.attempts = attempts
        super().__init__(
            f"model call to endpoint {endpoint!r} (model {model!r}) failed after "
            f"{attempts} attempt(s): {self.reason}"
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str, int]]:
        # Keeps the exception picklable (multiprocessing, Snakemake) despite the custom __init__.
        return (type(self), (self.endpoint, self.model, self.reason, self.attempts))


class EndpointStartError(RuntimeError):
    """A launched endpoint did not become healthy, or a ``base_url`` endpoint is unreachable."""
