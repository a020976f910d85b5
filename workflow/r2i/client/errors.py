"""Exceptions raised by the model client.

Both exceptions build their message only from values the client controls (endpoint name, model
name, a short reason) and pass every free-text part through :func:`redact`, so that an API key can
never leak into a traceback, a Snakemake log or a CI report, even if a server echoes the
``Authorization`` header back in an error body.
"""

from __future__ import annotations

import os
import re

__all__ = ["EndpointStartError", "ModelCallError", "redact"]

# Things that look like bearer credentials. Used in addition to exact redaction of the known key,
# because an error body may echo a key we never held (e.g. a proxy's own token).
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{4,}")
_MAX_REASON_CHARS = 500


def redact(text: str, *secrets: str | None) -> str:
    """Remove ``secrets`` and anything shaped like ``Bearer <token>`` from ``text``.

    Also truncates very long texts: reasons come from server bodies, which can be large.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = _BEARER_RE.sub(r"\1[REDACTED]", text)
    if len(text) > _MAX_REASON_CHARS:
        text = text[:_MAX_REASON_CHARS] + "..."
    return text


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
