"""The "thinking with images" baseline: the same model as an agent with a ``zoom_in`` tool.

The model gets the full image, the question and one tool over OpenAI function calling::

    zoom_in(x0, y0, x1, y1)   # a box in ORIGINAL image pixels

The tool crops the box from the original image and returns it upscaled (``zoom_factor``, Lanczos,
at most ``max_output_pixels``); the model may call it again until it answers inside ``<answer>``
tags or the turn budget (``max_turns`` model calls) is spent. The last allowed call is sent with
``tool_choice: "none"`` so the model must answer.

Transport: the request carries ``tools`` (and ``tool_choice``) as extra body fields. Tool calls
are read from the reply's text in the Hermes / Qwen format (``<tool_call>{"name": ...,
"arguments": {...}}</tool_call>``), which is what Qwen-family models emit and what vLLM returns as
content when its tool parser is off; when the parser is on (``--enable-auto-tool-choice``), the
structured ``message.tool_calls`` are written back into the text in the same form by
:class:`r2i.client.ModelClient`, so both server setups work (see docs/evaluation.md). The assistant turn is sent back with structured
``tool_calls``, then a ``tool`` message, then a ``user`` message carrying the zoomed image (tool
messages cannot carry images in the OpenAI format).

Latency per item is the sum of the item's model calls (the crops themselves take milliseconds).
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from r2i.client import ModelCallError, ModelClient, user_message
from r2i.images import clamp_box, crop_upscale, decode_image, encode_png

from .benchmarks import EvalItem
from .infer import Sampling, gather_limited

__all__ = ["ZOOM_TOOL", "ToolCall", "ZoomSettings", "parse_tool_calls", "run_tool_agent",
           "run_tool_baseline", "zoom_crop"]

ZOOM_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "zoom_in",
        "description": ("Crop a rectangular region of the image and return it enlarged, to see "
                        "small details. Coordinates are pixels of the original image "
                        "(x to the right, y down)."),
        "parameters": {
            "type": "object",
            "properties": {
                "x0": {"type": "number", "description": "left edge (px)"},
                "y0": {"type": "number", "description": "top edge (px)"},
                "x1": {"type": "number", "description": "right edge (px)"},
                "y1": {"type": "number", "description": "bottom edge (px)"},
            },
            "required": ["x0", "y0", "x1", "y1"],
        },
    },
}


LAST_TURN = "This is your last turn: answer now inside <answer> </answer> tags, no tool calls."


@dataclass(frozen=True)
class ZoomSettings:
    """The tool loop's bounds: model calls per item, upscale factor, output size cap and the
    smallest region side (px) a zoom is widened to. ``transport``: ``"tools"`` sends the tool as
    OpenAI ``tools``/``tool_choice`` body fields; ``"prompt"`` sends neither (the system prompt
    alone describes the tool and its ``<tool_call>`` format: for servers that refuse ``tools``,
    e.g. vLLM without ``--enable-auto-tool-choice``)."""

    max_turns: int = 4
    zoom_factor: float = 2.0
    max_output_pixels: int = 4_000_000
    min_region_side: int = 28
    transport: str = "tools"

    def __post_init__(self) -> None:
        if self.transport not in ("tools", "prompt"):
            raise ValueError("zoom tool: transport must be 'tools' or 'prompt'")
        if self.max_turns < 1:
            raise ValueError("zoom tool: max_turns must be >= 1")
        if self.zoom_factor <= 0:
            raise ValueError("zoom tool: zoom_factor must be > 0")


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call: name, arguments and the call id (generated when absent)."""

    id: str
    name: str
    arguments: dict[str, Any]


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Tool calls written in the reply text (Hermes/Qwen ``<tool_call>`` JSON blocks).

    ``arguments`` may be an object or a JSON string; a block that is not valid JSON is skipped.
    """
    calls: list[ToolCall] = []
    for k, block in enumerate(_TOOL_CALL.findall(text or "")):
        try:
            obj = json.loads(block)
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {}
        calls.append(ToolCall(str(obj.get("id") or f"call_{k}"), obj["name"],
                              args if isinstance(args, dict) else {}))
    return calls


def _box_from_args(args: dict[str, Any]) -> tuple[float, float, float, float]:
    if all(k in args for k in ("x0", "y0", "x1", "y1")):
        vals = [args["x0"], args["y0"], args["x1"], args["y1"]]
    else:
        vals = args.get("bbox") or args.get("bbox_2d") or []
    box = [float(v) for v in vals]
    if len(box) != 4:
        raise ValueError(f"zoom_in needs x0, y0, x1, y1; got {args!r}")
    x0, y0, x1, y1 = box
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def zoom_crop(image: bytes | Image.Image, box: Sequence[float], settings: ZoomSettings
              ) -> tuple[bytes, tuple[int, int, int, int]]:
    """PNG of ``box`` (original pixels, clamped, widened to ``min_region_side``) upscaled by
    ``zoom_factor`` (capped at ``max_output_pixels``), and the box actually cropped."""
    img = decode_image(image) if isinstance(image, bytes) else image
    x0, y0, x1, y1 = (float(v) for v in box)
    m = settings.min_region_side
    if x1 - x0 < m:
        cx = (x0 + x1) / 2
        x0, x1 = cx - m / 2, cx + m / 2
    if y1 - y0 < m:
        cy = (y0 + y1) / 2
        y0, y1 = cy - m / 2, cy + m / 2
    b = clamp_box((x0, y0, x1, y1), img.width, img.height)
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box {tuple(box)!r} lies outside the {img.width}x{img.height} image")
    area = (b[2] - b[0]) * (b[3] - b[1])
    factor = min(settings.zoom_factor, (settings.max_output_pixels / area) ** 0.5)
    out = crop_upscale(img, b, factor=max(factor, 1e-3))
    return encode_png(out), b


def _image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


async def run_tool_agent(client: ModelClient, model: str, item: EvalItem, system_prompt: str,
                         sampling: Sampling, settings: ZoomSettings) -> dict[str, Any]:
    """One item through the zoom-tool loop: the final response plus ``tool_calls``, ``turns``,
    the zoomed ``boxes``, latency (sum over calls) and tokens."""
    image = item.images[0]
    w, h = _image_size(image)
    text = f"{item.query}\n\n(The image is {w}x{h} pixels.)"
    msgs: list[dict[str, Any]] = []
    if system_prompt.strip():
        msgs.append({"role": "system", "content": system_prompt.strip()})
    msgs.append(user_message(text, item.images))
    rec: dict[str, Any] = {"id": item.id, "dimension": item.dimension, "view": "tool",
                           "model": model, "query": item.query, "reference": item.reference,
                           "response": None, "error": None, "tool_calls": 0, "turns": 0,
                           "boxes": [], "tool_errors": 0, "latency_s": 0.0,
                           "prompt_tokens": 0, "completion_tokens": 0, "cached": True}
    t0 = time.perf_counter()
    for turn in range(settings.max_turns):
        last = turn == settings.max_turns - 1
        extra = sampling.extra()
        if settings.transport == "tools":
            extra.update(tools=[ZOOM_TOOL], tool_choice="none" if last else "auto")
        try:
            res = await client.chat(model, msgs, n=1, seed=sampling.seed,
                                    temperature=sampling.temperature, top_p=sampling.top_p,
                                    max_tokens=sampling.max_tokens, extra=extra)
        except ModelCallError as exc:
            rec["error"] = str(exc)
            rec["latency_s"] += time.perf_counter() - t0
            return rec
        reply = res.texts[0]
        rec["turns"] += 1
        rec["latency_s"] += res.latency_s
        rec["prompt_tokens"] += res.prompt_tokens
        rec["completion_tokens"] += res.completion_tokens
        rec["cached"] = rec["cached"] and res.cached
        rec["response"] = reply
        calls = [c for c in parse_tool_calls(reply) if c.name == "zoom_in"]
        if not calls or "<answer>" in reply.lower() or last:
            break
        msgs.append({"role": "assistant", "content": reply, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for c in calls]})
        for c in calls:
            rec["tool_calls"] += 1
            try:
                crop, box = zoom_crop(image, _box_from_args(c.arguments), settings)
            except (ValueError, TypeError) as exc:
                rec["tool_errors"] += 1
                msgs.append({"role": "tool", "tool_call_id": c.id,
                             "content": f"zoom_in failed: {exc}"})
                continue
            rec["boxes"].append(list(box))
            msgs.append({"role": "tool", "tool_call_id": c.id,
                         "content": f"Zoomed view of region {list(box)} (original pixels), "
                                    "shown in the next message."})
            # Before the last allowed call the model is told to answer (with the "prompt"
            # transport this is the only way to say so; with "tools" tool_choice says it too).
            then = (LAST_TURN if turn + 1 == settings.max_turns - 1 else
                    "Continue; give the final answer inside <answer> </answer> tags when you "
                    "are sure.")
            msgs.append(user_message(f"Zoomed view of region {list(box)}, enlarged. {then}",
                                     [crop]))
    return rec


async def run_tool_baseline(client: ModelClient, model: str, items: Sequence[EvalItem],
                            system_prompt: str, sampling: Sampling, settings: ZoomSettings,
                            concurrency: int = 16) -> list[dict[str, Any]]:
    """Zoom-tool records of every item, in item order."""

    def make(it: EvalItem) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: run_tool_agent(client, model, it, system_prompt, sampling, settings)

    return await gather_limited([make(it) for it in items], concurrency, f"{model}/tool")
