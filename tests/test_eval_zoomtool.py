"""The zoom-tool loop (r2i.evaluation.zoomtool) against a scripted fake client."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from PIL import Image

from r2i.client import ChatResult
from r2i.evaluation.benchmarks import EvalItem
from r2i.evaluation.infer import Sampling
from r2i.evaluation.zoomtool import (
    ZoomSettings,
    parse_tool_calls,
    run_tool_agent,
    zoom_crop,
)
from r2i.sim.zoomtool_brain import with_tool_calls


def _png(size: tuple[int, int] = (400, 300)) -> bytes:
    img = Image.new("RGB", size, "white")
    img.paste((255, 0, 0), (100, 50, 140, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _call(x0: int, y0: int, x1: int, y1: int) -> str:
    args = {"x0": x0, "y0": y0, "x1": x1, "y1": y1}
    return f"<think>zoom</think>\n<tool_call>\n{json.dumps({'name': 'zoom_in', 'arguments': args})}\n</tool_call>"


class FakeClient:
    """Replies from a script; records every request."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    async def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> ChatResult:
        self.requests.append({"messages": json.loads(json.dumps(messages)), **kw})
        text = self.replies.pop(0) if self.replies else _call(0, 0, 10, 10)
        return ChatResult([text], False, 10, 5, 0.25, 1, "k", model)


ITEM = EvalItem(id="x", images=[_png()], query="What color is the square?", reference="red",
                dimension="color")


def test_parse_tool_calls_formats() -> None:
    calls = parse_tool_calls(_call(1, 2, 3, 4) + '<tool_call>{"name": "zoom_in", '
                             '"arguments": "{\\"x0\\": 5, \\"y0\\": 6, \\"x1\\": 7, \\"y1\\": 8}"}'
                             "</tool_call><tool_call>not json</tool_call>")
    assert [c.arguments for c in calls] == [{"x0": 1, "y0": 2, "x1": 3, "y1": 4},
                                            {"x0": 5, "y0": 6, "x1": 7, "y1": 8}]
    assert parse_tool_calls("<answer>B</answer>") == []


def test_zoom_crop_uses_original_pixels_and_upscales() -> None:
    data, box = zoom_crop(_png(), (100, 50, 140, 90), ZoomSettings(zoom_factor=2.0))
    img = Image.open(io.BytesIO(data))
    assert box == (100, 50, 140, 90) and img.size == (80, 80)
    assert img.convert("RGB").getpixel((40, 40)) == (255, 0, 0)
    _, small = zoom_crop(_png(), (200, 150, 202, 152), ZoomSettings(min_region_side=28))
    assert small == (187, 137, 215, 165)  # widened to 28 px around the centre
    _, edge = zoom_crop(_png(), (10, 10, 12, 12), ZoomSettings(min_region_side=28))
    assert edge == (0, 0, 25, 25)  # widened, then clamped to the image
    with pytest.raises(ValueError):
        zoom_crop(_png(), (500, 500, 600, 600), ZoomSettings())


def test_tool_loop_zooms_then_answers() -> None:
    client = FakeClient([_call(100, 50, 140, 90), "<think>red</think> <answer>red</answer>"])
    rec = asyncio.run(run_tool_agent(client, "m", ITEM, "sys", Sampling(), ZoomSettings()))  # type: ignore[arg-type]
    assert rec["tool_calls"] == 1 and rec["turns"] == 2 and rec["boxes"] == [[100, 50, 140, 90]]
    assert rec["response"].endswith("<answer>red</answer>")
    assert rec["latency_s"] == pytest.approx(0.5) and rec["completion_tokens"] == 10
    first, second = client.requests
    assert first["extra"]["tools"][0]["function"]["name"] == "zoom_in"
    assert first["extra"]["tool_choice"] == "auto"
    assert first["extra"]["top_k"] == 20 and first["extra"]["presence_penalty"] == 1.5
    assert first["temperature"] == 0.7 and first["top_p"] == 0.8 and first["seed"] == 42
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assistant = second["messages"][2]
    assert assistant["tool_calls"][0]["function"]["name"] == "zoom_in"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"])["x0"] == 100
    assert second["messages"][3]["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert second["messages"][4]["content"][0]["type"] == "image_url"


def test_tool_loop_is_bounded() -> None:
    client = FakeClient([])  # always asks for another zoom
    rec = asyncio.run(run_tool_agent(client, "m", ITEM, "", Sampling(), ZoomSettings(max_turns=3)))  # type: ignore[arg-type]
    assert rec["turns"] == 3 and rec["tool_calls"] == 2
    assert [r["extra"]["tool_choice"] for r in client.requests] == ["auto", "auto", "none"]
    assert client.requests[0]["messages"][0]["role"] == "user"  # no empty system message


def test_sim_server_adds_structured_tool_calls() -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": _call(1, 2, 3, 4)},
              "finish_reason": "stop"}
    out = with_tool_calls(choice)
    assert out["finish_reason"] == "tool_calls"
    assert json.loads(out["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "x0": 1, "y0": 2, "x1": 3, "y1": 4}
    assert out["message"]["content"] == "<think>zoom</think>"  # the call left the content
    only = with_tool_calls({"index": 0, "message": {"role": "assistant",
                                                    "content": _call(5, 6, 7, 8)[19:]}})
    assert only["message"]["content"] is None and len(only["message"]["tool_calls"]) == 1
    plain = {"index": 0, "message": {"role": "assistant", "content": "<answer>A</answer>"}}
    assert with_tool_calls(plain) is plain


def test_prompt_transport_sends_no_tools_and_asks_for_the_answer_last() -> None:
    client = FakeClient([])  # always asks for another zoom
    settings = ZoomSettings(max_turns=3, transport="prompt")
    rec = asyncio.run(run_tool_agent(client, "m", ITEM, "sys", Sampling(), settings))  # type: ignore[arg-type]
    assert rec["turns"] == 3
    assert all("tools" not in r["extra"] and "tool_choice" not in r["extra"] for r in client.requests)
    last_user = client.requests[-1]["messages"][-1]
    assert "last turn" in last_user["content"][-1]["text"]
    assert "last turn" not in client.requests[1]["messages"][-1]["content"][-1]["text"]


def test_client_turns_structured_tool_calls_back_into_text() -> None:
    """vLLM with a tool parser: null content + message.tool_calls -> the <tool_call> text the
    agent parses; calls present in the content too are not doubled."""
    from r2i.client.client import _parse_completion

    args = {"x0": 1, "y0": 2, "x1": 30, "y1": 40}
    call = {"id": "c0", "type": "function",
            "function": {"name": "zoom_in", "arguments": json.dumps(args)}}
    body = {"choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}},
        {"index": 1, "message": {"role": "assistant", "content": "look", "tool_calls": [call]}},
        {"index": 2, "message": {"role": "assistant", "content": _call(1, 2, 30, 40),
                                 "tool_calls": [call]}},
        {"index": 3, "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "zoom_in", "arguments": "{not json"}}]}},
    ]}
    texts, _, _ = _parse_completion(json.dumps(body).encode(), 4)
    for text in texts[:3]:
        calls = parse_tool_calls(text)
        assert [(c.name, c.arguments) for c in calls] == [("zoom_in", args)], text
    assert texts[1].startswith("look")
    assert "{not json" in texts[3]
    with pytest.raises(Exception, match=r"message\.content"):
        _parse_completion(json.dumps({"choices": [{"index": 0, "message": {
            "role": "assistant", "content": None}}]}).encode(), 1)
