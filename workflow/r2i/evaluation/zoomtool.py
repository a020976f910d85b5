"""The "thinking with images" baseline: the same model as an agent with an image zoom-in tool.

Two variants (``ZoomSettings.variant``; docs/evaluation.md compares them):

``qwen_agent`` (default): the semantics of Qwen-Agent's ``image_zoom_in_tool``, which the paper's
reference baseline (``mm-eval/infer_with_tool.py``, "Qwen3-VL + zoom tool") runs. Schema, prompt
and message format are written here:

* one function, ``image_zoom_in_tool(bbox_2d, label, img_idx)``: ``bbox_2d`` is
  ``[x1, y1, x2, y2]`` in **relative coordinates 0-1000** of image ``img_idx``, where image 0 is
  the benchmark image and image ``k`` the ``k``-th zoomed image returned so far (so the model can
  zoom into a zoom); ``label`` names what the region shows;
* the crop is cut from that image at full resolution; a region narrower or shorter than 32 px is
  widened around its centre to 32 px (Qwen-Agent keeps the widened box only when it stays above
  32 px inside the image); the crop is then resized (bicubic) to sides that are multiples of 32
  with its area in ``[262,144, 12,845,056]`` pixels (:func:`r2i.qwen_vision.smart_resize`), so a
  small region comes back at >= 262,144 pixels;
* every image the model receives, the benchmark image and the crops alike, is sent as JPEG with
  its short side capped at 1080 px (bilinear), as Qwen-Agent's OpenAI-compatible VL client does;
  the tool always crops from the uncapped image;
* **transport** ``prompt`` (default, what Qwen-Agent does): the tool's JSON schema goes into the
  system prompt inside ``<tools></tools>`` with the ``<tool_call>`` reply format (the Hermes/Qwen
  convention); the model's reply, tool call text included, is sent back as the assistant turn,
  and each result comes back as a user turn ``<tool_response>`` + image + ``</tool_response>``.
  ``tools`` sends the schema as OpenAI ``tools`` instead (for servers with a tool parser);
* up to ``max_turns`` (20, Qwen-Agent's ``MAX_LLM_CALL_PER_RUN``) model calls per item; the loop
  ends at the first reply without a tool call. No final answer is forced: a model still zooming
  after 20 calls is judged on its last reply (``hit_call_limit``).

``pixel`` (this project's first baseline, kept as a named variant): ``zoom_in(x0, y0, x1, y1)`` in
pixels of the original image 0 only, the crop upscaled ``zoom_factor`` (2x, Lanczos, capped at
``max_output_pixels``), widened to ``min_region_side``; 4 model calls per item by default, the
last sent with ``tool_choice: "none"`` (or told to answer, with the ``prompt`` transport), images
sent as stored.

Tool calls are read from the reply's text in the Hermes / Qwen format (``<tool_call>{"name": ...,
"arguments": {...}}</tool_call>``), what Qwen-family models emit; a server whose tool parser is on
returns structured ``message.tool_calls``, which :class:`r2i.client.ModelClient` writes back into
the text in the same form, so both server setups work.

Latency per item (``latency_s``) is the sum of the item's model calls; the per-item wall time at
concurrency 1, the paper's speed axis, is measured by the evaluation's latency probe.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from r2i.client import ModelCallError, ModelClient, image_data_url, user_message
from r2i.images import clamp_box, crop_upscale, decode_image, encode_png
from r2i.qwen_vision import smart_resize

from .benchmarks import EvalItem
from .infer import Sampling, gather_limited

__all__ = [
    "QWEN_ZOOM_TOOL",
    "VARIANTS",
    "ZOOM_TOOL",
    "ToolCall",
    "ZoomSettings",
    "parse_tool_calls",
    "qwen_zoom_crop",
    "run_tool_agent",
    "run_tool_baseline",
    "send_image",
    "tools_system_block",
    "zoom_crop",
]

VARIANTS = ("qwen_agent", "pixel")

#: The qwen_agent variant's tool (Qwen-Agent ``image_zoom_in_tool`` semantics; our wording).
QWEN_ZOOM_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "image_zoom_in_tool",
        "description": ("Cut a rectangular region out of one of the images seen so far and return "
                        "it enlarged, to look at small details such as text, counts or colours."),
        "parameters": {
            "type": "object",
            "properties": {
                "bbox_2d": {
                    "type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                    "description": ("The region as [x1, y1, x2, y2]: top-left and bottom-right "
                                    "corners in relative coordinates from 0 to 1000 of the "
                                    "chosen image."),
                },
                "label": {"type": "string",
                          "description": "A short name for what the region shows."},
                "img_idx": {"type": "integer",
                            "description": ("Which image to cut from: 0 is the first image of "
                                            "the conversation, 1 the first zoomed image "
                                            "returned, and so on.")},
            },
            "required": ["bbox_2d", "label", "img_idx"],
        },
    },
}

#: The pixel variant's tool (pixels of the original image).
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

#: Qwen-Agent's crop bounds: regions widened to 32 px; crops resized to multiples of 32 px
#: between 256 and 12,544 cells of 32 x 32 (262,144 .. 12,845,056 pixels).
QWEN_MIN_SIDE = 32
QWEN_FACTOR = 32
QWEN_MIN_PIXELS = 256 * 32 * 32
QWEN_MAX_PIXELS = 12_845_056
#: Qwen-Agent's OpenAI-compatible VL client sends every image with its short side capped here.
QWEN_SEND_SHORT_SIDE = 1080

_DEFAULTS = {"qwen_agent": {"max_turns": 20, "transport": "prompt"},
             "pixel": {"max_turns": 4, "transport": "tools"}}


@dataclass(frozen=True)
class ZoomSettings:
    """The tool baseline's settings (``evaluation.tool``).

    ``variant``: ``qwen_agent`` (default) or ``pixel`` (see the module doc). ``max_turns``: model
    calls per item (None: 20 for qwen_agent, 4 for pixel). ``transport``: ``prompt`` (the tool is
    described in the system prompt; no ``tools`` field is sent) or ``tools`` (OpenAI
    ``tools``/``tool_choice`` fields); None: the variant's (``prompt`` / ``tools``).
    ``send_short_side`` (qwen_agent): images are sent with their short side capped at this
    (None: as stored). ``zoom_factor``, ``max_output_pixels``, ``min_region_side``: the pixel
    variant's crop.
    """

    variant: str = "qwen_agent"
    max_turns: int | None = None
    transport: str | None = None
    send_short_side: int | None = QWEN_SEND_SHORT_SIDE
    zoom_factor: float = 2.0
    max_output_pixels: int = 4_000_000
    min_region_side: int = 28

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"zoom tool: variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.transport not in (None, "tools", "prompt"):
            raise ValueError("zoom tool: transport must be 'tools' or 'prompt'")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError("zoom tool: max_turns must be >= 1")
        if self.zoom_factor <= 0:
            raise ValueError("zoom tool: zoom_factor must be > 0")

    @property
    def turns(self) -> int:
        return int(self.max_turns or _DEFAULTS[self.variant]["max_turns"])

    @property
    def how(self) -> str:
        return str(self.transport or _DEFAULTS[self.variant]["transport"])

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> ZoomSettings:
        return cls(**dict(data or {}))


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call: name, arguments and the call id (generated when absent)."""

    id: str
    name: str
    arguments: dict[str, Any]


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Tool calls written in the reply text (Hermes/Qwen ``<tool_call>`` JSON blocks), outside
    ``<think>`` blocks (a call the model only considers while thinking is not made).

    ``arguments`` may be an object or a JSON string; a block that is not valid JSON is skipped.
    """
    calls: list[ToolCall] = []
    for k, block in enumerate(_TOOL_CALL.findall(_THINK.sub(" ", text or ""))):
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


def tools_system_block(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools section appended to the system prompt (``prompt`` transport): the schemas as
    JSON lines inside ``<tools></tools>`` and the ``<tool_call>`` reply format, the Hermes/Qwen
    convention Qwen-VL models are trained on (our wording)."""
    schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\n"
            "You can call the functions below to help with the user's request. Their signatures "
            "are given as JSON inside <tools></tools>:\n"
            f"<tools>\n{schemas}\n</tools>\n\n"
            "To call a function, reply with a JSON object holding its name and arguments inside "
            "<tool_call></tool_call> tags:\n"
            "<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n'
            "</tool_call>")


# --------------------------------------------------------------------------- qwen_agent crops


def _image(data: bytes | Image.Image) -> Image.Image:
    return decode_image(data) if isinstance(data, bytes | bytearray) else data


def qwen_widen(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Clamp ``box`` (pixels) to the image; a side under 32 px is widened around the centre so
    the shorter side reaches 32 px (both sides scaled alike), kept only if it stays above 32 px
    once clamped (Qwen-Agent's rule). Returned as whole pixels (outer edges)."""
    left, top = max(0.0, float(box[0])), max(0.0, float(box[1]))
    right, bottom = min(float(width), float(box[2])), min(float(height), float(box[3]))
    h, w = bottom - top, right - left
    if h <= 0 or w <= 0:
        raise ValueError(f"the region {list(box)} is empty inside the {width}x{height} image")
    if h < QWEN_MIN_SIDE or w < QWEN_MIN_SIDE:
        cx, cy = (left + right) / 2, (top + bottom) / 2
        ratio = QWEN_MIN_SIDE / min(h, w)
        hh, hw = math.ceil(h * ratio * 0.5), math.ceil(w * ratio * 0.5)
        nl, nr = max(0, math.floor(cx - hw)), min(width, math.ceil(cx + hw))
        nt, nb = max(0, math.floor(cy - hh)), min(height, math.ceil(cy + hh))
        if nb - nt > QWEN_MIN_SIDE and nr - nl > QWEN_MIN_SIDE:
            return nl, nt, nr, nb
    return math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom)


def qwen_zoom_crop(image: bytes | Image.Image, bbox_2d: Sequence[float]
                   ) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The zoomed image for ``bbox_2d`` (0-1000 relative coordinates of ``image``) and the pixel
    box cut: widened (:func:`qwen_widen`), cropped at full resolution, resized (bicubic) to
    multiples of 32 px with 262,144 .. 12,845,056 pixels."""
    img = _image(image)
    vals = [float(v) for v in bbox_2d]
    if len(vals) != 4:
        raise ValueError(f"bbox_2d needs 4 numbers [x1, y1, x2, y2], got {list(bbox_2d)!r}")
    x1, y1, x2, y2 = min(vals[0], vals[2]), min(vals[1], vals[3]), max(vals[0], vals[2]), \
        max(vals[1], vals[3])
    w, h = img.size
    box = qwen_widen((x1 / 1000 * w, y1 / 1000 * h, x2 / 1000 * w, y2 / 1000 * h), w, h)
    crop = img.crop(box)
    nh, nw = smart_resize(crop.height, crop.width, QWEN_FACTOR, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
    return crop.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC), box


def send_image(image: bytes | Image.Image, short_side: int | None) -> bytes:
    """What the qwen_agent variant sends for an image: JPEG, short side capped at ``short_side``
    (bilinear, aspect kept as Qwen-Agent computes it); ``None``: PNG as is."""
    img = _image(image).convert("RGB")
    if short_side is None:
        return encode_png(img)
    w, h = img.size
    if min(w, h) > short_side:
        if w <= h:
            size = (short_side, int(short_side / w * h))
        else:
            size = (int(short_side / h * w), short_side)
        img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


# --------------------------------------------------------------------------- pixel variant


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
    """Pixel variant: PNG of ``box`` (original pixels, clamped, widened to ``min_region_side``)
    upscaled by ``zoom_factor`` (capped at ``max_output_pixels``), and the box actually cropped."""
    img = _image(image)
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


# --------------------------------------------------------------------------- the agent loop


def _new_record(item: EvalItem, model: str) -> dict[str, Any]:
    return {"id": item.id, "dimension": item.dimension, "view": "tool", "model": model,
            "query": item.query, "reference": item.reference, "response": None, "error": None,
            "tool_calls": 0, "turns": 0, "boxes": [], "tool_errors": 0, "latency_s": 0.0,
            "prompt_tokens": 0, "completion_tokens": 0, "cached": True, "hit_call_limit": False,
            "item_s": 0.0, "call_wall_s": 0.0}


async def _call(client: ModelClient, model: str, msgs: list[dict[str, Any]], sampling: Sampling,
                extra: dict[str, Any], rec: dict[str, Any]) -> str | None:
    """One model call of the loop, accounted in ``rec``; None (``rec["error"]`` set) on failure."""
    t0 = time.perf_counter()
    try:
        res = await client.chat(model, msgs, n=1, seed=sampling.seed,
                                temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, extra=extra)
    except ModelCallError as exc:
        rec["error"] = str(exc)
        rec["latency_s"] += time.perf_counter() - t0
        rec["call_wall_s"] += time.perf_counter() - t0
        return None
    rec["call_wall_s"] += time.perf_counter() - t0
    rec["turns"] += 1
    rec["latency_s"] += res.latency_s
    rec["prompt_tokens"] += res.prompt_tokens
    rec["completion_tokens"] += res.completion_tokens
    rec["cached"] = rec["cached"] and res.cached
    rec["response"] = res.texts[0]
    return res.texts[0]


def _assistant_turn(reply: str, calls: Sequence[ToolCall], structured: bool) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": reply}
    if structured:
        msg["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                             for c in calls]
    return msg


async def _run_qwen_agent(client: ModelClient, model: str, item: EvalItem, system_prompt: str,
                          sampling: Sampling, settings: ZoomSettings,
                          extra_fields: Mapping[str, Any] | None) -> dict[str, Any]:
    """The qwen_agent variant's loop (see the module doc)."""
    rec = _new_record(item, model)
    tools_transport = settings.how == "tools"
    images: list[bytes | Image.Image] = list(item.images)  # what img_idx indexes (full resolution)
    system = system_prompt.strip()
    if not tools_transport:
        block = tools_system_block([QWEN_ZOOM_TOOL])
        system = f"{system}\n\n{block}" if system else block
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    msgs.append(user_message(item.query, [send_image(b, settings.send_short_side)
                                          for b in item.images]))
    for turn in range(settings.turns):
        extra = {**dict(sampling.extra()), **dict(extra_fields or {})}
        if tools_transport:
            extra.update(tools=[QWEN_ZOOM_TOOL], tool_choice="auto")
        reply = await _call(client, model, msgs, sampling, extra, rec)
        if reply is None:
            return rec
        calls = [c for c in parse_tool_calls(reply) if c.name == "image_zoom_in_tool"]
        if not calls:
            break
        if turn == settings.turns - 1:
            rec["hit_call_limit"] = True  # Qwen-Agent stops here too: judged on this reply
            break
        msgs.append(_assistant_turn(reply, calls, tools_transport))
        results: list[dict[str, Any]] = []  # one user turn with every result (prompt transport)
        for c in calls:
            rec["tool_calls"] += 1
            try:
                idx = int(c.arguments.get("img_idx", 0))
                if not 0 <= idx < len(images):
                    raise ValueError(f"img_idx {idx} does not exist (images 0..{len(images) - 1})")
                zoomed, box = qwen_zoom_crop(images[idx], c.arguments.get("bbox_2d") or [])
            except (ValueError, TypeError) as exc:
                rec["tool_errors"] += 1
                text = f"Error: {exc}"
                if tools_transport:
                    msgs.append({"role": "tool", "tool_call_id": c.id, "content": text})
                else:
                    results.append({"type": "text", "text": f"<tool_response>\n{text}\n"
                                                            "</tool_response>"})
                continue
            images.append(zoomed)
            rec["boxes"].append({"img_idx": idx, "bbox_2d": list(c.arguments["bbox_2d"]),
                                 "box_px": list(box), "size": list(zoomed.size)})
            sent = send_image(zoomed, settings.send_short_side)
            if tools_transport:  # tool messages cannot carry images in the OpenAI format
                msgs.append({"role": "tool", "tool_call_id": c.id,
                             "content": f"Zoomed image {len(images) - 1} follows."})
                msgs.append(user_message(f"Zoomed image {len(images) - 1}:", [sent]))
            else:
                part = {"type": "image_url", "image_url": {"url": image_data_url(sent)}}
                results += [{"type": "text", "text": "<tool_response>\n"}, part,
                            {"type": "text", "text": "\n</tool_response>"}]
        if results:
            msgs.append({"role": "user", "content": results})
    return rec


async def _run_pixel_agent(client: ModelClient, model: str, item: EvalItem, system_prompt: str,
                           sampling: Sampling, settings: ZoomSettings,
                           extra_fields: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pixel variant's loop (see the module doc)."""
    image = item.images[0]
    w, h = _image_size(image)
    text = f"{item.query}\n\n(The image is {w}x{h} pixels.)"
    msgs: list[dict[str, Any]] = []
    if system_prompt.strip():
        msgs.append({"role": "system", "content": system_prompt.strip()})
    msgs.append(user_message(text, item.images))
    rec = _new_record(item, model)
    max_turns = settings.turns
    for turn in range(max_turns):
        last = turn == max_turns - 1
        extra = {**dict(sampling.extra()), **dict(extra_fields or {})}
        if settings.how == "tools":
            extra.update(tools=[ZOOM_TOOL], tool_choice="none" if last else "auto")
        reply = await _call(client, model, msgs, sampling, extra, rec)
        if reply is None:
            return rec
        calls = [c for c in parse_tool_calls(reply) if c.name == "zoom_in"]
        if not calls or "<answer>" in reply.lower() or last:
            break
        msgs.append(_assistant_turn(reply, calls, True))
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
            then = (LAST_TURN if turn + 1 == max_turns - 1 else
                    "Continue; give the final answer inside <answer> </answer> tags when you "
                    "are sure.")
            msgs.append(user_message(f"Zoomed view of region {list(box)}, enlarged. {then}",
                                     [crop]))
    return rec


async def run_tool_agent(client: ModelClient, model: str, item: EvalItem, system_prompt: str,
                         sampling: Sampling, settings: ZoomSettings,
                         extra_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One item through the zoom-tool loop of ``settings.variant``: the final response plus
    ``tool_calls``, ``turns`` (model calls), the zoomed ``boxes``, ``tool_errors``,
    ``hit_call_limit``, latency (sum over calls), ``item_s`` (wall time of the whole loop),
    ``call_wall_s`` (the part spent waiting for calls) and tokens. ``extra_fields`` are further
    body fields of every call (the latency probe's tag)."""
    run = _run_qwen_agent if settings.variant == "qwen_agent" else _run_pixel_agent
    t0 = time.perf_counter()
    rec = await run(client, model, item, system_prompt, sampling, settings, extra_fields)
    rec["item_s"] = time.perf_counter() - t0
    return rec


async def run_tool_baseline(client: ModelClient, model: str, items: Sequence[EvalItem],
                            system_prompt: str, sampling: Sampling, settings: ZoomSettings,
                            concurrency: int = 16) -> list[dict[str, Any]]:
    """Zoom-tool records of every item, in item order."""

    def make(it: EvalItem) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: run_tool_agent(client, model, it, system_prompt, sampling, settings)

    return await gather_limited([make(it) for it in items], concurrency, f"{model}/tool")
