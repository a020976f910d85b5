"""Model client for OpenAI-compatible chat endpoints (vLLM, hosted APIs, the simulator).

See ``docs/interfaces.md``. Typical use::

    cfg = EndpointConfig(name="teacher", launch="r2i-sim-server --port {port}")
    async with open_endpoint(cfg) as base_url:
        client = ModelClient(cfg, base_url=base_url, cache=CallCache("results/cache/calls"))
        try:
            res = await client.chat(model="sim-teacher-a",
                                    messages=[user_message("What is this?", [img])],
                                    n=4, seed=seed_for(item_id, "describe"), temperature=0.7)
        finally:
            await client.aclose()
"""

from .cache import CallCache, cache_key, canonical_json
from .client import ChatResult, ModelClient
from .config import EndpointConfig, normalize_base_url
from .endpoint import free_port, open_endpoint, run_async
from .errors import EndpointStartError, ModelCallError
from .messages import image_data_url, seed_for, summarize_messages, user_message
from .stats import ClientStats

__all__ = [
    "CallCache",
    "ChatResult",
    "ClientStats",
    "EndpointConfig",
    "EndpointStartError",
    "ModelCallError",
    "ModelClient",
    "cache_key",
    "canonical_json",
    "free_port",
    "image_data_url",
    "normalize_base_url",
    "open_endpoint",
    "run_async",
    "seed_for",
    "summarize_messages",
    "user_message",
]
