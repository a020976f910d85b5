"""Endpoint configuration.

An :class:`EndpointConfig` describes *how to reach* one OpenAI-compatible server; it never holds
a credential, only the *name* of the environment variable that holds it (``api_key_env``), so the
config can be logged, hashed into Snakemake params and printed in reprs safely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["EndpointConfig", "normalize_base_url"]

# Config keys that would put a secret into a config file. Rejected outright: keys come only from
# environment variables (see docs/architecture).
_FORBIDDEN_KEYS = frozenset({"api_key", "key", "token", "authorization", "password"})


def normalize_base_url(url: str) -> str:
    """Return ``url`` without trailing slashes and without a trailing ``/v1``.

    Users copy base URLs from OpenAI SDK docs (``.../v1``) as well as from vLLM logs (no
    ``/v1``); the client appends ``/v1/...`` itself, so both spellings must work.
    """
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")].rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
    return url


@dataclass(frozen=True)
class EndpointConfig:
    """How to reach one model endpoint.

    Exactly one of ``base_url`` (a server that already runs) and ``launch`` (a shell command
    template containing ``{port}``, started by :func:`r2i.client.open_endpoint` on a free loopback
    port) must be given.

    ``max_retries`` counts *re*-tries: a call makes at most ``max_retries + 1`` attempts.
    ``supports_n=False`` makes the client split an ``n``-sample call into ``n`` requests with seeds
    ``seed, seed+1, ...`` (for servers that ignore or reject ``n``).
    """

    name: str
    base_url: str | None = None
    launch: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = 16
    timeout_s: float = 300
    max_retries: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30
    supports_n: bool = True
    health_path: str = "/health"
    startup_timeout_s: float = 900

    def __post_init__(self) -> None:
        if (self.base_url is None) == (self.launch is None):
            raise ValueError(
                f"endpoint {self.name!r}: give exactly one of base_url and launch"
            )
        if self.base_url is not None:
            object.__setattr__(self, "base_url", normalize_base_url(self.base_url))
        if self.launch is not None and "{port}" not in self.launch:
            raise ValueError(f"endpoint {self.name!r}: launch command must contain {{port}}")
        if self.max_concurrency < 1:
            raise ValueError(f"endpoint {self.name!r}: max_concurrency must be >= 1")
        if self.max_retries < 0:
            raise ValueError(f"endpoint {self.name!r}: max_retries must be >= 0")
        if self.timeout_s <= 0 or self.startup_timeout_s <= 0:
            raise ValueError(f"endpoint {self.name!r}: timeouts must be > 0")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"endpoint {self.name!r}: backoff times must be >= 0")
        if not self.health_path.startswith("/"):
            object.__setattr__(self, "health_path", "/" + self.health_path)

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> EndpointConfig:
        """Build from a config mapping (e.g. ``config['endpoints'][name]``).

        Unknown keys are an error (typos would otherwise silently fall back to defaults), and a
        literal key in the config is refused so credentials never end up in versioned files.
        """
        bad = _FORBIDDEN_KEYS.intersection(k.lower() for k in data)
        if bad:
            raise ValueError(
                f"endpoint {name!r}: do not put credentials in the config ({sorted(bad)}); "
                "set api_key_env to the name of an environment variable instead"
            )
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"endpoint {name!r}: unknown keys {sorted(unknown)}")
        return cls(name=name, **dict(data))
