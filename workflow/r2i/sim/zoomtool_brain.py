"""Zoom-tool behaviour of the SIMULATED student, on the toy world.

TEST DOUBLE / OFFLINE DEMO, not a model. It drives both tool formats of the evaluation's
thinking-with-images baseline (:mod:`r2i.evaluation.zoomtool`):

* ``qwen_agent`` (the default): the tool ``image_zoom_in_tool`` described in the system prompt
  (``<tools>`` block) or sent as OpenAI ``tools``; calls carry ``bbox_2d`` in 0-1000 relative
  coordinates of image ``img_idx`` (0: the benchmark image, k: the k-th zoom returned), and
  results come back as user turns with ``<tool_response>`` and the zoomed image;
* ``pixel``: ``zoom_in(x0, y0, x1, y1)`` in pixels of the original image (OpenAI ``tools``, or a
  system prompt describing it with the ``<tool_call>`` format).

Behaviour:

* first turn (no zoom done yet; for ``pixel`` also ``tool_choice`` not ``"none"``): the simulated
  model looks at the image it received; if it can already see the detail the question asks about
  (or finds no target), it answers as usual; otherwise it asks to zoom on a region around the
  object it believes is meant (twice the object's size), with a ``<tool_call>`` block
  (Hermes/Qwen format). With probability ``ZOOM_MISS_RATE`` it looks at a wrong place (a shifted
  region), like a real agent sometimes does;
* after a zoom: it answers the question on the last image it received, exactly as the plain
  student does. It follows ``img_idx`` chains (a zoom into a zoom) to know which part of the
  scene the last image shows.

:func:`with_tool_calls` turns such a reply into an OpenAI assistant message with structured
``tool_calls`` (the server applies it when the request had ``tools``); the text stays in
``content`` so that clients reading only contents see the call too.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .toybrain import ToyBrain, _View

__all__ = ["ZOOM_MISS_RATE", "has_zoom_tool", "with_tool_calls", "zoom_tool_complete"]

#: Probability that the simulated agent zooms on a wrong region.
ZOOM_MISS_RATE = 0.2
#: Marks a request re-sent to the brain without the tool (no zoom handling for it).
_PLAIN = "_r2i_zoom_plain"
#: The zoom box is the object's box grown by this factor (context around it).
ZOOM_CONTEXT = 2.0
QWEN_TOOL = "image_zoom_in_tool"
PIXEL_TOOL = "zoom_in"

Region = tuple[float, float, float, float]


def _offered(params: dict[str, Any] | None, messages: list[dict[str, Any]] | None) -> str | None:
    """``"qwen_agent"`` / ``"pixel"``: the zoom tool the request offers (None: none)."""
    if (params or {}).get(_PLAIN):
        return None
    names = set()
    for t in (params or {}).get("tools") or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict):
            names.add(fn.get("name"))
    for m in messages or ():
        c = m.get("content")
        if m.get("role") == "system" and isinstance(c, str) and "<tool_call>" in c:
            names.update(n for n in (QWEN_TOOL, PIXEL_TOOL) if f'"{n}"' in c or f"{n}(" in c)
    if QWEN_TOOL in names:
        return "qwen_agent"
    if PIXEL_TOOL in names:
        return "pixel"
    return None


def has_zoom_tool(params: dict[str, Any] | None,
                  messages: list[dict[str, Any]] | None = None) -> bool:
    """True when the request offers a zoom tool (``image_zoom_in_tool`` or ``zoom_in``): as an
    OpenAI tool, or described in a system prompt with the ``<tool_call>`` format. False for the
    plain requests this module sends back to the brain."""
    return _offered(params, messages) is not None


def _image_urls(content: Any) -> list[str]:
    out = []
    for p in content if isinstance(content, list) else ():
        if isinstance(p, dict) and p.get("type") == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if isinstance(url, str):
                out.append(url)
    return out


def _question(messages: list[dict[str, Any]]) -> str:
    """The first user text (the benchmark question), without the pixel variant's size note."""
    for m in messages:
        if m.get("role") != "user":
            continue
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for p in parts:
            if isinstance(p, dict) and p.get("type") == "text" and str(p.get("text", "")).strip():
                return re.sub(r"\n*\(The image is \d+x\d+ pixels\.\)\s*$", "", str(p["text"]))
    return ""


def _plain_request(messages: list[dict[str, Any]], question: str, url: str | None
                   ) -> list[dict[str, Any]]:
    """A plain single-image question (system + question + the LAST image), for the brain."""
    system = [m for m in messages if m.get("role") == "system"]
    content: list[dict[str, Any]] = []
    if url:
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": question})
    return [*system, {"role": "user", "content": content}]


_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


def _calls_of(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of an assistant turn's tool calls (structured, else ``<tool_call>``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for c in message.get("tool_calls") or []:
        fn = c.get("function") or {}
        args = _json_args(fn.get("arguments"))
        if args is not None:
            out.append((str(fn.get("name")), args))
    if out:
        return out
    text = re.sub(r"<think>.*?</think>", " ", str(message.get("content") or ""), flags=re.DOTALL)
    for block in _CALL.findall(text):
        try:
            obj = json.loads(block)
        except ValueError:
            continue
        args = _json_args(obj.get("arguments")) if isinstance(obj, dict) else None
        if args is not None:
            out.append((str(obj.get("name")), args))
    return out


def _json_args(args: Any) -> dict[str, Any] | None:
    """A tool call's arguments as a dict (given as a dict or a JSON string), else None."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return args if isinstance(args, dict) else None


def _zoom_regions(messages: list[dict[str, Any]], full: Region, full_scale: float
                  ) -> list[Region]:
    """The scene region each zoom of the conversation shows, in call order.

    ``qwen_agent``: ``bbox_2d`` is relative (0-1000) to the region of image ``img_idx`` (0: the
    full view ``full``); ``pixel``: the box is in pixels of the original image (received pixels
    per scene pixel: ``full_scale``). Malformed calls are skipped (the tool refused them too).
    """
    regions: list[Region] = [full]
    for m in messages:
        if m.get("role") != "assistant":
            continue
        for name, args in _calls_of(m):
            try:
                if name == QWEN_TOOL:
                    base = regions[int(args.get("img_idx", 0))]
                    b = [float(v) for v in args["bbox_2d"]]
                    bw, bh = base[2] - base[0], base[3] - base[1]
                    regions.append((base[0] + b[0] / 1000 * bw, base[1] + b[1] / 1000 * bh,
                                    base[0] + b[2] / 1000 * bw, base[1] + b[3] / 1000 * bh))
                elif name == PIXEL_TOOL:
                    b = [float(args[k]) for k in ("x0", "y0", "x1", "y1")]
                    regions.append((full[0] + b[0] / full_scale, full[1] + b[1] / full_scale,
                                    full[0] + b[2] / full_scale, full[1] + b[3] / full_scale))
            except (KeyError, IndexError, TypeError, ValueError):
                continue
    return regions[1:]


def zoom_tool_complete(brain: ToyBrain, model: str, messages: list[dict[str, Any]], n: int,
                       seed: int | None, params: dict[str, Any]) -> list[str]:
    """``n`` replies of the simulated agent to a request that offers a zoom tool."""
    fmt = _offered(params, messages) or "pixel"
    plain_params = {k: v for k, v in params.items() if k not in ("tools", "tool_choice")}
    plain_params[_PLAIN] = True
    question = _question(messages)
    urls = [u for m in messages if m.get("role") == "user" for u in _image_urls(m.get("content"))]
    first_url, last_url = (urls[0], urls[-1]) if urls else (None, None)
    plain = _plain_request(messages, question, last_url)
    full = brain._view(first_url) if first_url else None
    zoomed = (len(urls) > 1 and full is not None and full.reg is not None
              and full.scene is not None)
    if zoomed:
        regions = _zoom_regions(messages, full.region, full.reg.scale)  # type: ignore[union-attr]
        if regions and last_url is not None:
            return _answer_on_zoom(brain, model, question, regions[-1], full, last_url, n, seed,
                                   plain_params)
    last_text = _last_user_text(messages)
    if (params.get("tool_choice") == "none" or "last turn: answer now" in last_text
            or full is None or len(urls) > 1):
        return brain.complete(model, plain, n, seed, plain_params)
    persona = brain._persona(model)
    base = 0 if seed is None else int(seed)
    out: list[str] = []
    for i in range(max(1, int(n))):
        h = hashlib.sha256(f"zoom\x1f{base + i}\x1f{model}\x1f{question}\x1f{first_url[-64:]}"
                           .encode())
        rng = random.Random(int.from_bytes(h.digest()[:8], "big"))
        attr, ref, obj = brain._find_target(question, full, rng, use_red_box=False)
        if obj is None or full.reg is None or brain._can_see(obj, attr or "", full, persona):
            out.extend(brain.complete(model, plain, 1, base + i, plain_params))
            continue
        x0, y0, x1, y1 = obj.bbox
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_w, half_h = (x1 - x0) * ZOOM_CONTEXT / 2, (y1 - y0) * ZOOM_CONTEXT / 2
        if rng.random() < ZOOM_MISS_RATE:  # looks in the wrong place
            cx += rng.choice((-1, 1)) * 4 * half_w
            cy += rng.choice((-1, 1)) * 4 * half_h
        region = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        name = ref or "target"
        call = json.dumps(_call_for(fmt, region, full, name))
        out.append(f"<think>The {name} is too small to make out here; I zoom in on it.</think>\n"
                   f"<tool_call>\n{call}\n</tool_call>")
    return out


def _call_for(fmt: str, region: Region, full: _View, label: str) -> dict[str, Any]:
    """The tool call asking to zoom on ``region`` (scene pixels) in ``fmt``'s coordinates."""
    rx0, ry0, rx1, ry1 = full.region
    if fmt == "qwen_agent":
        rw, rh = rx1 - rx0, ry1 - ry0
        rel = [round(min(1000.0, max(0.0, (region[0] - rx0) / rw * 1000))),
               round(min(1000.0, max(0.0, (region[1] - ry0) / rh * 1000))),
               round(min(1000.0, max(0.0, (region[2] - rx0) / rw * 1000))),
               round(min(1000.0, max(0.0, (region[3] - ry0) / rh * 1000)))]
        return {"name": QWEN_TOOL, "arguments": {"bbox_2d": rel, "label": label, "img_idx": 0}}
    assert full.reg is not None
    s = full.reg.scale
    box = [round((region[0] - rx0) * s), round((region[1] - ry0) * s),
           round((region[2] - rx0) * s), round((region[3] - ry0) * s)]
    return {"name": PIXEL_TOOL, "arguments": dict(zip(("x0", "y0", "x1", "y1"), box, strict=True))}


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1].get("content") if messages else ""
    if isinstance(content, list):
        texts = [str(p.get("text", "")) for p in content if isinstance(p, dict)]
        return texts[-1] if texts else ""
    return str(content or "")


def _answer_on_zoom(brain: ToyBrain, model: str, question: str, region: Region, full: _View,
                    url: str, n: int, seed: int | None, params: dict[str, Any]) -> list[str]:
    """Answer on the zoomed image (the last one received).

    The toy registry recognises full scenes and the pipeline's crops, not arbitrary zooms; the
    simulated agent knows which region it asked for, so the zoomed view is the full image's
    registration restricted to that region, at the received image's resolution.
    """
    from .toybrain import Registration, _Request, _View

    view = brain._view(url)
    if view.reg is None and full.reg is not None and full.scene is not None:
        rw, rh = max(1e-6, region[2] - region[0]), max(1e-6, region[3] - region[1])
        reg = Registration(full.reg.scene_id, region, 0.5 * (view.width / rw + view.height / rh),
                           None, "crop", 0.0)
        view = _View(reg, full.scene, view.width, view.height)
    req = _Request(model, brain._persona(model), "student_answer", question, [view], params)
    base = 0 if seed is None else int(seed)
    key = ",".join(f"{v:.1f}" for v in region)
    out = []
    for i in range(max(1, int(n))):
        h = hashlib.sha256(f"zoomed\x1f{base + i}\x1f{model}\x1f{question}\x1f{key}".encode())
        out.append(brain._student_answer(req, random.Random(int.from_bytes(h.digest()[:8], "big"))))
    return out


def with_tool_calls(choice: dict[str, Any]) -> dict[str, Any]:
    """A response choice whose content holds ``<tool_call>`` blocks, as a server with a tool
    parser returns it: structured ``tool_calls``, the blocks removed from the content (null when
    empty) and ``finish_reason: "tool_calls"``; other choices unchanged."""
    msg = choice.get("message") or {}
    calls = []
    for k, block in enumerate(_CALL.findall(str(msg.get("content") or ""))):
        try:
            obj = json.loads(block)
        except ValueError:
            continue
        calls.append({"id": f"call_{k}", "type": "function",
                      "function": {"name": obj.get("name"),
                                   "arguments": json.dumps(obj.get("arguments", {}))}})
    if not calls:
        return choice
    # like vLLM's tool parser: the calls leave the content (null when nothing else is left)
    rest = _CALL_BLOCK.sub("", str(msg.get("content") or "")).strip() or None
    return {**choice, "message": {**msg, "content": rest, "tool_calls": calls},
            "finish_reason": "tool_calls"}
