"""Zoom-tool behaviour of the SIMULATED student (OpenAI function calling), on the toy world.

TEST DOUBLE / OFFLINE DEMO, not a model. When a request carries ``tools`` with a ``zoom_in``
function (the evaluation's thinking-with-images baseline, :mod:`r2i.evaluation.zoomtool`):

* first turn (no zoom done yet, ``tool_choice`` not ``"none"``): the simulated model looks at the
  full image; if it can already see the detail the question asks about (or finds no target), it
  answers as usual; otherwise it asks to zoom on a region around the object it believes is meant,
  in original image pixels, with a ``<tool_call>`` block (Hermes/Qwen format). With probability
  ``ZOOM_MISS_RATE`` it localises the wrong place (a shifted box), like a real agent sometimes does;
* after a zoom (or when told ``tool_choice: "none"``): it answers the question on the last image
  it received, exactly as the plain student does.

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
    from .toybrain import ToyBrain

__all__ = ["ZOOM_MISS_RATE", "has_zoom_tool", "with_tool_calls", "zoom_tool_complete"]

#: Probability that the simulated agent zooms on a wrong region.
ZOOM_MISS_RATE = 0.2
#: Marks a request re-sent to the brain without the tool (no zoom handling for it).
_PLAIN = "_r2i_zoom_plain"
#: The zoom box is the object's box grown by this factor (context around it).
ZOOM_CONTEXT = 2.0


def has_zoom_tool(params: dict[str, Any] | None,
                  messages: list[dict[str, Any]] | None = None) -> bool:
    """True when the request offers a function named ``zoom_in``: as an OpenAI tool, or (the
    evaluation's ``prompt`` transport) described in a system prompt with the ``<tool_call>``
    format. False for the plain requests this module sends back to the brain."""
    if (params or {}).get(_PLAIN):
        return False
    for m in messages or ():
        c = m.get("content")
        if m.get("role") == "system" and isinstance(c, str) and "zoom_in" in c and "<tool_call>" in c:
            return True
    for t in (params or {}).get("tools") or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and fn.get("name") == "zoom_in":
            return True
    return False


def _plain_request(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str, str | None]:
    """(messages of a plain single-image question: system + first user text + LAST image,
    the question text, the last image URL)."""
    system = [m for m in messages if m.get("role") == "system"]
    question = ""
    last_url: str | None = None
    for m in messages:
        if m.get("role") != "user":
            continue
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for p in parts:
            if p.get("type") == "text" and not question:
                question = str(p.get("text", ""))
            elif p.get("type") == "image_url":
                iu = p.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu
                if isinstance(url, str):
                    last_url = url
    question = re.sub(r"\n*\(The image is \d+x\d+ pixels\.\)\s*$", "", question)
    content: list[dict[str, Any]] = []
    if last_url:
        content.append({"type": "image_url", "image_url": {"url": last_url}})
    content.append({"type": "text", "text": question})
    return [*system, {"role": "user", "content": content}], question, last_url


def zoom_tool_complete(brain: ToyBrain, model: str, messages: list[dict[str, Any]], n: int,
                       seed: int | None, params: dict[str, Any]) -> list[str]:
    """``n`` replies of the simulated agent to a request that offers the zoom tool."""
    plain_params = {k: v for k, v in params.items() if k not in ("tools", "tool_choice")}
    plain_params[_PLAIN] = True
    plain, question, url = _plain_request(messages)
    box = _last_zoom_box(messages)
    if box is not None and url is not None:
        return _answer_on_zoom(brain, model, messages, question, box, url, n, seed, plain_params)
    last_text = str((messages[-1].get("content") or [{}])[-1].get("text", "")) \
        if isinstance(messages[-1].get("content"), list) else str(messages[-1].get("content"))
    if params.get("tool_choice") == "none" or "last turn: answer now" in last_text or url is None:
        return brain.complete(model, plain, n, seed, plain_params)
    view = brain._view(url)
    persona = brain._persona(model)
    base = 0 if seed is None else int(seed)
    out: list[str] = []
    for i in range(max(1, int(n))):
        h = hashlib.sha256(f"zoom\x1f{base + i}\x1f{model}\x1f{question}\x1f{url[-64:]}".encode())
        rng = random.Random(int.from_bytes(h.digest()[:8], "big"))
        attr, ref, obj = brain._find_target(question, view, rng, use_red_box=False)
        if obj is None or view.reg is None or brain._can_see(obj, attr or "", view, persona):
            out.extend(brain.complete(model, plain, 1, base + i, plain_params))
            continue
        x0, y0, x1, y1 = obj.bbox
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_w, half_h = (x1 - x0) * ZOOM_CONTEXT / 2, (y1 - y0) * ZOOM_CONTEXT / 2
        if rng.random() < ZOOM_MISS_RATE:  # looks in the wrong place
            cx += rng.choice((-1, 1)) * 4 * half_w
            cy += rng.choice((-1, 1)) * 4 * half_h
        rx0, ry0, _, _ = view.region
        s = view.reg.scale
        box = [round((cx - half_w - rx0) * s), round((cy - half_h - ry0) * s),
               round((cx + half_w - rx0) * s), round((cy + half_h - ry0) * s)]
        args = dict(zip(("x0", "y0", "x1", "y1"), box, strict=True))
        name = ref or "target"
        call = json.dumps({"name": "zoom_in", "arguments": args})
        out.append(f"<think>The {name} is too small to make out here; I zoom in on it.</think>\n"
                   f"<tool_call>\n{call}\n</tool_call>")
    return out


def _last_zoom_box(messages: list[dict[str, Any]]) -> list[float] | None:
    """The box of the conversation's last ``zoom_in`` call (structured or ``<tool_call>`` text)."""
    for m in reversed(messages):
        if m.get("role") != "assistant":
            continue
        calls = [c.get("function") or {} for c in m.get("tool_calls") or []]
        args_list: list[Any] = [c.get("arguments") for c in calls if c.get("name") == "zoom_in"]
        if not args_list:
            for block in _CALL.findall(str(m.get("content") or "")):
                try:
                    obj = json.loads(block)
                except ValueError:
                    continue
                if isinstance(obj, dict) and obj.get("name") == "zoom_in":
                    args_list.append(obj.get("arguments"))
        for args in reversed(args_list):
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    continue
            try:
                return [float(args[k]) for k in ("x0", "y0", "x1", "y1")]
            except (KeyError, TypeError, ValueError):
                continue
    return None


def _first_image_url(messages: list[dict[str, Any]]) -> str | None:
    for m in messages:
        content = m.get("content")
        if m.get("role") != "user" or not isinstance(content, list):
            continue
        for p in content:
            if isinstance(p, dict) and p.get("type") == "image_url":
                iu = p.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu
                if isinstance(url, str):
                    return url
    return None


def _answer_on_zoom(brain: ToyBrain, model: str, messages: list[dict[str, Any]], question: str,
                    box: list[float], url: str, n: int, seed: int | None,
                    params: dict[str, Any]) -> list[str]:
    """Answer on the zoomed image (the last one received).

    The toy registry recognises full scenes and the pipeline's crops, not arbitrary zooms; the
    simulated agent knows which box it asked for, so the zoomed view is the full image's
    registration restricted to that box, at the received image's resolution.
    """
    from .toybrain import Registration, _Request, _View

    view = brain._view(url)
    first = _first_image_url(messages)
    full = brain._view(first) if first else None
    if view.reg is None and full is not None and full.reg is not None and full.scene is not None:
        rx0, ry0, _, _ = full.region
        s = full.reg.scale
        region = (rx0 + box[0] / s, ry0 + box[1] / s, rx0 + box[2] / s, ry0 + box[3] / s)
        rw, rh = max(1e-6, region[2] - region[0]), max(1e-6, region[3] - region[1])
        reg = Registration(full.reg.scene_id, region, 0.5 * (view.width / rw + view.height / rh),
                           None, "crop", 0.0)
        view = _View(reg, full.scene, view.width, view.height)
    req = _Request(model, brain._persona(model), "student_answer", question, [view], params)
    base = 0 if seed is None else int(seed)
    out = []
    for i in range(max(1, int(n))):
        h = hashlib.sha256(f"zoomed\x1f{base + i}\x1f{model}\x1f{question}\x1f{box}".encode())
        out.append(brain._student_answer(req, random.Random(int.from_bytes(h.digest()[:8], "big"))))
    return out


_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


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
