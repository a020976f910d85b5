"""The zoom-tool loop (r2i.evaluation.zoomtool) against a scripted fake client: the default
``qwen_agent`` variant (Qwen-Agent's image_zoom_in_tool semantics) and the ``pixel`` variant."""

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
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    ZoomSettings,
    parse_tool_calls,
    qwen_zoom_crop,
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


def _qcall(bbox: list[float], img_idx: int = 0, label: str = "sign") -> str:
    args = {"bbox_2d": bbox, "label": label, "img_idx": img_idx}
    return ("<think>too small</think>\n<tool_call>\n"
            f"{json.dumps({'name': 'image_zoom_in_tool', 'arguments': args})}\n</tool_call>")


class FakeClient:
    """Replies from a script; records every request."""

    def __init__(self, replies: list[str], default: str | None = None) -> None:
        self.replies = list(replies)
        self.default = default or _call(0, 0, 10, 10)
        self.requests: list[dict[str, Any]] = []

    async def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> ChatResult:
        self.requests.append({"messages": json.loads(json.dumps(messages)), **kw})
        text = self.replies.pop(0) if self.replies else self.default
        return ChatResult([text], False, 10, 5, 0.25, 1, "k", model)


PIXEL = ZoomSettings(variant="pixel")


def _decode_url(url: str) -> Image.Image:
    import base64

    head, _, payload = url.partition(",")
    img = Image.open(io.BytesIO(base64.b64decode(payload)))
    img.load()
    img.info["mime"] = head
    return img


def test_qwen_zoom_crop_reproduces_the_qwen_agent_tool() -> None:
    """bbox_2d in 0-1000 relative coordinates; regions under 32 px widened around the centre;
    crops resized to multiples of 32 with 262,144 .. 12,845,056 pixels (bicubic)."""
    img = Image.new("RGB", (2000, 1000), "white")
    img.paste((255, 0, 0), (200, 200, 600, 400))
    zoomed, box = qwen_zoom_crop(img, [100, 200, 300, 400])
    assert box == (200, 200, 600, 400)
    # 400x200 px -> scaled up to >= 262,144 px, sides multiples of 32: 736 x 384
    assert zoomed.size == (736, 384) and zoomed.getpixel((368, 192)) == (255, 0, 0)
    # a 10x5 px region is widened to 64x33 around its centre (the short side reaches 32 px)
    _, small = qwen_zoom_crop(img, [500, 500, 505, 505])
    assert small == (973, 486, 1037, 519)
    # at the corner the widened box would be clipped under 32 px: Qwen-Agent keeps the original
    corner, cbox = qwen_zoom_crop(img, [0, 0, 5, 5])
    assert cbox == (0, 0, 10, 5) and corner.width * corner.height >= QWEN_MIN_PIXELS
    # a huge region is scaled down within the cap
    big, _ = qwen_zoom_crop(Image.new("RGB", (4000, 4000)), [0, 0, 1000, 1000])
    assert big.width * big.height <= QWEN_MAX_PIXELS and big.width % 32 == 0
    with pytest.raises(ValueError, match="empty"):
        qwen_zoom_crop(img, [900, 900, 900, 950])
    with pytest.raises(ValueError, match="4 numbers"):
        qwen_zoom_crop(img, [1, 2, 3])


def test_qwen_agent_loop_message_format_and_zoom_into_a_zoom() -> None:
    big = io.BytesIO()
    Image.new("RGB", (2400, 1600), "white").save(big, format="PNG")
    item = EvalItem(id="q", images=[big.getvalue()], query="What does the sign say?",
                    reference="EXIT", dimension="ocr")
    client = FakeClient([_qcall([400, 400, 600, 600]), _qcall([250, 250, 750, 750], img_idx=1),
                         "<think>EXIT</think> <answer>EXIT</answer>"])
    rec = asyncio.run(run_tool_agent(client, "m", item, "Look closely.", Sampling(),  # type: ignore[arg-type]
                                     ZoomSettings()))
    assert rec["turns"] == 3 and rec["tool_calls"] == 2 and not rec["hit_call_limit"]
    assert rec["response"].endswith("<answer>EXIT</answer>")
    # zoom 1 cuts 480x320 px of the original; zoom 2 cuts the middle half of zoom 1's image
    assert rec["boxes"][0]["img_idx"] == 0 and rec["boxes"][0]["box_px"] == [960, 640, 1440, 960]
    z1w, z1h = rec["boxes"][0]["size"]
    assert rec["boxes"][1]["img_idx"] == 1
    assert rec["boxes"][1]["box_px"] == [z1w // 4, z1h // 4, 3 * z1w // 4, 3 * z1h // 4]
    first, second, third = client.requests
    # prompt transport (Qwen-Agent's): the schema is in the system prompt, no tools field
    assert all("tools" not in r["extra"] and "tool_choice" not in r["extra"] for r in client.requests)
    system = first["messages"][0]["content"]
    assert system.startswith("Look closely.") and "<tools>" in system and "<tool_call>" in system
    schema = json.loads(system.split("<tools>\n")[1].split("\n</tools>")[0])
    assert schema["function"]["name"] == "image_zoom_in_tool"
    assert set(schema["function"]["parameters"]["required"]) == {"bbox_2d", "label", "img_idx"}
    # the benchmark image is sent as JPEG with its short side capped at 1080 px
    sent = _decode_url(first["messages"][1]["content"][0]["image_url"]["url"])
    assert sent.size == (1620, 1080) and "image/jpeg" in sent.info["mime"]
    # the reply goes back as the assistant turn, the result as a user <tool_response> turn
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert second["messages"][2] == {"role": "assistant", "content": _qcall([400, 400, 600, 600])}
    parts = second["messages"][3]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text"]
    assert parts[0]["text"] == "<tool_response>\n" and parts[2]["text"] == "\n</tool_response>"
    assert _decode_url(parts[1]["image_url"]["url"]).size == tuple(rec["boxes"][0]["size"])
    assert len(third["messages"]) == 6


def test_qwen_agent_stops_after_20_model_calls_without_forcing_an_answer() -> None:
    client = FakeClient([], default=_qcall([100, 100, 200, 200]))  # always zooms again
    rec = asyncio.run(run_tool_agent(client, "m", ITEM, "", Sampling(), ZoomSettings()))  # type: ignore[arg-type]
    assert rec["turns"] == 20 and rec["tool_calls"] == 19 and rec["hit_call_limit"]
    assert rec["tool_errors"] == 0 and len(rec["boxes"]) == 19


def test_qwen_agent_tool_errors_are_reported_to_the_model() -> None:
    client = FakeClient([_qcall([1, 2, 3, 4], img_idx=5), "<answer>red</answer>"])
    rec = asyncio.run(run_tool_agent(client, "m", ITEM, "", Sampling(), ZoomSettings()))  # type: ignore[arg-type]
    assert rec["tool_errors"] == 1 and rec["turns"] == 2
    text = client.requests[1]["messages"][-1]["content"][0]["text"]
    assert "img_idx 5 does not exist" in text and text.startswith("<tool_response>")


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
    data, box = zoom_crop(_png(), (100, 50, 140, 90), ZoomSettings(variant="pixel", zoom_factor=2.0))
    img = Image.open(io.BytesIO(data))
    assert box == (100, 50, 140, 90) and img.size == (80, 80)
    assert img.convert("RGB").getpixel((40, 40)) == (255, 0, 0)
    _, small = zoom_crop(_png(), (200, 150, 202, 152), ZoomSettings(variant="pixel", min_region_side=28))
    assert small == (187, 137, 215, 165)  # widened to 28 px around the centre
    _, edge = zoom_crop(_png(), (10, 10, 12, 12), ZoomSettings(variant="pixel", min_region_side=28))
    assert edge == (0, 0, 25, 25)  # widened, then clamped to the image
    with pytest.raises(ValueError):
        zoom_crop(_png(), (500, 500, 600, 600), PIXEL)


def test_tool_loop_zooms_then_answers() -> None:
    client = FakeClient([_call(100, 50, 140, 90), "<think>red</think> <answer>red</answer>"])
    rec = asyncio.run(run_tool_agent(client, "m", ITEM, "sys", Sampling(), PIXEL))  # type: ignore[arg-type]
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
    rec = asyncio.run(run_tool_agent(client, "m", ITEM, "", Sampling(), ZoomSettings(variant="pixel", max_turns=3)))  # type: ignore[arg-type]
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
    settings = ZoomSettings(variant="pixel", max_turns=3, transport="prompt")
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
