"""Anthropic answers to OpenAI answers: whole messages and recorded streams, checked against the
official SDK's own types, against each other (a stream must say what the whole message says),
and for incrementality (a chunk leaves as soon as its event arrives)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import OpenAISettings
from ccproxy_core.sse import SSEDecoder, iter_events
from ccproxy_gateway.openai.chat import CHAT, ChatPlan, ChatStreamTranslator, chat_completion, translate_chat_request
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.reasoning import decode_reasoning
from ccproxy_gateway.openai.responses import (
    RESPONSES,
    ResponsesPlan,
    ResponsesStreamTranslator,
    response_object,
    translate_responses_request,
)
from ccproxy_gateway.openai.stream import translate_stream

RECORDED = Path(__file__).parent / "recorded"
STREAMS = sorted(p.stem for p in RECORDED.glob("*.sse"))
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def chat_plan(stream: bool = False, json_mode: bool = False, include_usage: bool = True) -> ChatPlan:
    data: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if stream and include_usage:
        data["stream_options"] = {"include_usage": True}
    if json_mode:
        data["response_format"] = {"type": "json_object"}
    return translate_chat_request(CHAT.parse(data), ModelMap(), OpenAISettings())


def responses_plan(stream: bool = False, json_mode: bool = False) -> ResponsesPlan:
    data: dict[str, Any] = {"model": "gpt-5", "input": "hi", "stream": stream}
    if json_mode:
        data["text"] = {"format": {"type": "json_object"}}
    return translate_responses_request(RESPONSES.parse(data), ModelMap(), OpenAISettings())


def raw(name: str) -> bytes:
    return (RECORDED / f"{name}.sse").read_bytes()


def events(name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, orjson.loads(e.data)) for e in SSEDecoder().feed(raw(name))]


def accumulate(name: str) -> dict[str, Any]:
    """The whole Anthropic message a recorded stream describes (what a non-streamed request
    would have answered)."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for kind, data in events(name):
        if kind == "message_start":
            message = {**data["message"], "content": []}
        elif kind == "content_block_start":
            message["content"].append(dict(data["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = block.get("signature", "") + delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop" and data["index"] in partial:
            message["content"][data["index"]]["input"] = json.loads(partial[data["index"]])
        elif kind == "message_delta":
            message.update(data["delta"])
            message["usage"] = {**message["usage"], **data["usage"]}
    return message


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def chat_frames(name: str, plan: ChatPlan, size: int = 7) -> list[bytes]:
    translator = ChatStreamTranslator(plan, created=1)
    return [f async for f in translate_stream(iter_events(chunked(raw(name), size)), translator)]


def chat_chunks(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
        if frame != b"data: [DONE]\n\n":
            out.append(orjson.loads(frame[6:]))
    return out


def merge_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client library builds from the chunks."""
    message: dict[str, Any] = {"content": "", "reasoning_content": "", "tool_calls": {}, "thinking_blocks": []}
    finish = None
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            message["content"] += delta.get("content") or ""
            message["reasoning_content"] += delta.get("reasoning_content") or ""
            message["thinking_blocks"] += delta.get("thinking_blocks") or []
            for call in delta.get("tool_calls") or []:
                slot = message["tool_calls"].setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] = (call.get("function") or {}).get("name") or slot["name"]
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    message["finish_reason"] = finish
    return message


# --- chat: whole messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("refusal", "content_filter"), ("pause_turn", "stop"), (None, "stop")],
)
def test_finish_reasons(stop_reason: str | None, finish: str) -> None:
    message = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason,
               "usage": {"input_tokens": 1, "output_tokens": 1}}
    assert chat_completion(message, chat_plan())["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("name", ["tool_use", "thinking"])
def test_chat_completion_from_a_whole_message_parses_in_the_official_sdk(name: str) -> None:
    message = accumulate(name)
    body = chat_completion(message, chat_plan(), created=1)
    completion = ChatCompletion.model_validate(body)
    assert completion.id == "chatcmpl-" + message["id"]
    assert completion.model == "gpt-4o"  # the name the client asked for
    usage = message["usage"]
    prompt = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0) + usage.get(
        "cache_creation_input_tokens", 0)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, usage["output_tokens"])
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == usage.get("cache_read_input_tokens", 0)


def test_tool_calls_carry_ids_and_json_arguments() -> None:
    body = chat_completion(accumulate("tool_use"), chat_plan())
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Okay, let's check the weather."
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"), ("toolu_02NoArgs", "get_time")]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"location": "San Francisco, CA"}, {}]


def test_thinking_is_reasoning_content_plus_exact_blocks() -> None:
    message = accumulate("thinking")
    out = chat_completion(message, chat_plan())["choices"][0]["message"]
    assert out["reasoning_content"] == "The user wants 27 * 453. 27 * 453 = 12231."
    assert out["thinking_blocks"] == message["content"][:2]
    assert out["content"] == "27 * 453 = 12,231"


@pytest.mark.parametrize(("name", "answer"), [("json_tool", {"name": "Ada", "age": 36}),
                                             ("json_after_text", {"ok": True})])
def test_json_mode_answer_is_the_tool_input_as_text(name: str, answer: dict[str, Any]) -> None:
    body = chat_completion(accumulate(name), chat_plan(json_mode=True))
    choice = body["choices"][0]
    assert json.loads(choice["message"]["content"]) == answer
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


# --- chat: streams --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
async def test_chat_stream_is_as_recorded_whatever_the_network_splits(name: str) -> None:
    plan = chat_plan(stream=True, json_mode=name.startswith("json"))
    expected = (RECORDED / f"{name}.chat.jsonl").read_text().splitlines()
    for size in (1, 7, 64, 100_000):
        frames = await chat_frames(name, plan, size)
        got = [f.decode().removeprefix("data: ").rstrip("\n") for f in frames]
        assert got == expected, f"split every {size} bytes"


@pytest.mark.parametrize("name", [n for n in STREAMS if n != "midstream_error"])
async def test_chat_stream_parses_in_the_sdk_and_says_what_the_whole_message_says(name: str) -> None:
    plan = chat_plan(stream=True, json_mode=name.startswith("json"))
    frames = await chat_frames(name, plan)
    assert frames[-1] == b"data: [DONE]\n\n"
    chunks = chat_chunks(frames)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert len({c["id"] for c in chunks}) == 1
    streamed = merge_chat(chunks[:-1])
    whole = chat_completion(accumulate(name), chat_plan(json_mode=name.startswith("json")))["choices"][0]
    assert streamed["finish_reason"] == whole["finish_reason"]
    if name.startswith("json"):  # the same JSON; the whole message's is re-serialised, compactly
        assert json.loads(streamed["content"]) == json.loads(whole["message"]["content"])
        assert whole["finish_reason"] == "stop"
    else:
        assert streamed["content"] == (whole["message"]["content"] or "")
    assert streamed["reasoning_content"] == whole["message"].get("reasoning_content", "")
    assert streamed["thinking_blocks"] == whole["message"].get("thinking_blocks", [])
    calls = [{"id": c["id"], "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
             for c in whole["message"].get("tool_calls", [])]
    assert [{**c, "arguments": json.loads(c["arguments"])} for c in streamed["tool_calls"].values()] == calls


async def test_tool_call_deltas_name_the_call_first_then_stream_arguments() -> None:
    chunks = chat_chunks(await chat_frames("tool_use", chat_plan(stream=True)))
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"]
              and c["choices"][0]["delta"].get("tool_calls")]
    first = [d for d in deltas if d["index"] == 0]
    assert first[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and first[0]["function"]["name"] == "get_weather"
    assert all("id" not in d and "name" not in d["function"] for d in first[1:])
    assert len(first) >= 4  # the start, then each argument fragment as it came


async def test_without_include_usage_no_usage_chunk() -> None:
    chunks = chat_chunks(await chat_frames("tool_use", chat_plan(stream=True, include_usage=False)))
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)


async def test_midstream_error_ends_with_an_openai_error_and_no_done() -> None:
    frames = await chat_frames("midstream_error", chat_plan(stream=True))
    chunks = chat_chunks(frames)
    assert frames[-1] != b"data: [DONE]\n\n"
    assert chunks[-1] == {"error": {"message": "Overloaded", "type": "server_error", "param": None,
                                    "code": "overloaded_error"}}
    assert merge_chat(chunks[:-1])["content"] == "Hel"


async def test_connection_lost_mid_stream_is_an_error_event_too() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield raw("tool_use")[:900]
        raise ProxyError(502, "upstream connection lost (ClientPayloadError)")

    translator = ChatStreamTranslator(chat_plan(stream=True))
    chunks = chat_chunks([f async for f in translate_stream(iter_events(broken()), translator)])
    assert chunks[-1]["error"]["code"] == "api_error" and "connection lost" in chunks[-1]["error"]["message"]


async def test_truncated_stream_is_an_error_not_a_success() -> None:
    async def truncated() -> AsyncIterator[bytes]:
        yield raw("tool_use")[:900]

    frames = [f async for f in translate_stream(iter_events(truncated()), ChatStreamTranslator(chat_plan(stream=True)))]
    assert b"[DONE]" not in frames[-1] and b'"error"' in frames[-1]


async def test_chunks_leave_as_soon_as_their_event_arrives() -> None:
    """The translator never waits for more of the stream than the event it answers."""
    pulled: list[int] = []
    data = raw("tool_use")

    async def upstream() -> AsyncIterator[bytes]:
        for n, piece in enumerate(data.split(b"\n\n")):
            pulled.append(n)
            yield piece + b"\n\n"

    stream = translate_stream(iter_events(upstream()), ChatStreamTranslator(chat_plan(stream=True)))
    seen = []
    async for frame in stream:
        chunk = orjson.loads(frame[6:]) if frame != b"data: [DONE]\n\n" else None
        if chunk and chunk.get("choices") and chunk["choices"][0]["delta"].get("content") == "Okay":
            seen.append(pulled[-1])
    assert seen == [3]  # the 4th event is the first text delta: nothing after it was read yet


# --- responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tool_use", "thinking", "json_tool", "json_after_text"])
def test_response_object_parses_in_the_official_sdk(name: str) -> None:
    message = accumulate(name)
    plan = responses_plan(json_mode=name.startswith("json"))
    response = Response.model_validate(response_object(message, plan, created=1))
    assert response.id == "resp_" + message["id"].removeprefix("msg_")
    assert response.model == "gpt-5" and response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == message["usage"]["output_tokens"]
    if name == "tool_use":
        calls = [o for o in response.output if o.type == "function_call"]
        assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
            ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"location": "San Francisco, CA"}),
            ("toolu_02NoArgs", "get_time", {})]
        assert response.output_text == "Okay, let's check the weather."
    if name == "thinking":
        reasoning = [o for o in response.output if o.type == "reasoning"]
        assert [decode_reasoning(r.encrypted_content) for r in reasoning] == message["content"][:2]
        assert reasoning[0].summary[0].text == message["content"][0]["thinking"]
    if name == "json_tool":
        assert json.loads(response.output_text) == {"name": "Ada", "age": 36}
    if name == "json_after_text":  # the text before the JSON tool call is not part of the answer
        assert json.loads(response.output_text) == {"ok": True}


async def test_json_mode_answered_in_text_still_answers() -> None:
    """Claude did not call the JSON tool (possible when it could not be forced): the text it
    wrote is the answer, held back while a JSON call could still follow, then sent."""
    chunks = chat_chunks(await chat_frames("thinking", chat_plan(stream=True, json_mode=True)))
    assert merge_chat(chunks[:-1])["content"] == "27 * 453 = 12,231"
    got = await response_events("thinking", responses_plan(stream=True, json_mode=True))
    final = got[-1][1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "reasoning", "message"]
    assert final["output"][-1]["content"][0]["text"] == "27 * 453 = 12,231"
    assert final["output"] == [b["item"] for k, b in got if k == "response.output_item.done"]


def test_max_tokens_makes_an_incomplete_response() -> None:
    message = {"id": "msg_1", "content": [{"type": "text", "text": "cut"}], "stop_reason": "max_tokens",
               "usage": {"input_tokens": 1, "output_tokens": 5}}
    body = response_object(message, responses_plan())
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}


def parsed_json(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items with JSON (JSON-mode text, tool arguments) parsed: the streamed JSON keeps
    Claude's spacing, the whole message's is re-serialised."""
    out = json.loads(json.dumps(output))
    for item in out:
        if "arguments" in item:
            item["arguments"] = json.loads(item["arguments"])
        for part in item.get("content", []):
            if part.get("text", "").startswith("{"):
                part["text"] = json.loads(part["text"])
    return out


async def response_events(name: str, plan: ResponsesPlan, size: int = 5) -> list[tuple[str, dict[str, Any]]]:
    translator = ResponsesStreamTranslator(plan, created=1)
    frames = [f async for f in translate_stream(iter_events(chunked(raw(name), size)), translator)]
    decoded = [(e.event, orjson.loads(e.data)) for f in frames for e in SSEDecoder().feed(f)]
    assert len(decoded) == len(frames)
    return decoded


@pytest.mark.parametrize("name", [n for n in STREAMS if n != "midstream_error"])
async def test_responses_stream_event_sequence_and_final_response(name: str) -> None:
    json_mode = name.startswith("json")
    got = await response_events(name, responses_plan(stream=True, json_mode=json_mode))
    for kind, body in got:
        assert body["type"] == kind
        STREAM_EVENT.validate_python(body)
    assert [b["sequence_number"] for _, b in got] == list(range(len(got)))
    kinds = [k for k, _ in got]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    final = got[-1][1]["response"]
    whole = response_object(accumulate(name), responses_plan(json_mode=json_mode), created=1)
    assert parsed_json(final["output"]) == parsed_json(whole["output"])
    assert final["usage"] == whole["usage"]
    done_items = [b["item"] for k, b in got if k == "response.output_item.done"]
    assert done_items == final["output"]
    added = [b["output_index"] for k, b in got if k == "response.output_item.added"]
    assert added == list(range(len(whole["output"])))


async def test_responses_stream_for_tool_use_in_order() -> None:
    kinds = [k for k, _ in await response_events("tool_use", responses_plan(stream=True))]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]


async def test_responses_stream_midstream_error_fails_the_response() -> None:
    got = await response_events("midstream_error", responses_plan(stream=True))
    (error_kind, error), (failed_kind, failed) = got[-2], got[-1]
    assert (error_kind, failed_kind) == ("error", "response.failed")
    assert error["code"] == "server_error" and error["message"] == "Overloaded"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "Overloaded"}
    deltas = [b["delta"] for k, b in got if k == "response.output_text.delta"]
    assert deltas == ["Hel"]


async def test_hot_path_chunks_have_the_wire_models_shape() -> None:
    """Chunks are built as dicts for speed; they must be exactly what the official SDK's chunk
    type holds (nothing lost or added when it reads them)."""
    chunks = chat_chunks(await chat_frames("thinking", chat_plan(stream=True)))
    assert any(c["choices"] and c["choices"][0]["delta"].get("thinking_blocks") for c in chunks)
    for chunk in chunks:
        assert ChatCompletionChunk.model_validate(chunk).model_dump(exclude_unset=True) == chunk
