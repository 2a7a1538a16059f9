"""The Responses API end to end: the official ``openai`` SDK -> ``ccproxy serve`` -> the fake
Anthropic upstream, as a ``store: false`` client (Codex's way) uses it."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.openai.conftest import IDENTITY, OpenAIServer, png_bytes, png_data_url

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


def test_response_with_instructions_and_usage(server: OpenAIServer) -> None:
    raw = server.client().responses.with_raw_response.create(
        model="gpt-5", instructions="Be brief.", input="hello", max_output_tokens=500)
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.model == "gpt-5"
    assert response.output_text == "Echo: hello"
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    body = server.upstream(raw.headers.get("x-request-id"))["body"]
    assert [b["text"] for b in body["system"]] == [IDENTITY, "Be brief."]
    assert (body["model"], body["max_tokens"]) == ("claude-sonnet-5-5", 500)


def test_streamed_response_event_sequence(server: OpenAIServer) -> None:
    kinds: list[str] = []
    text = ""
    with server.client().responses.stream(model="gpt-5", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": png_data_url(), "detail": "auto"}]},
    ]) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") >= 3
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert text == final.output_text == f"Echo: look [saw 1 image(s): image/png {len(png_bytes())} bytes]"
    assert final.usage is not None and final.usage.output_tokens > 0


def test_function_call_round_trip_with_output_items_as_input(server: OpenAIServer) -> None:
    client = server.client()
    conversation: list[Any] = [{"role": "user", "content": "Weather in Rome? [[fake:tool]]"}]
    first = client.responses.create(model="gpt-5", input=conversation, tools=[WEATHER], store=False)  # type: ignore[list-item]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "fake-city"}
    conversation += [item.model_dump(exclude_none=True) for item in first.output]
    conversation.append({"type": "function_call_output", "call_id": call.call_id, "output": "22C"})
    second = client.responses.create(model="gpt-5", input=conversation, tools=[WEATHER], store=False)  # type: ignore[list-item]
    assert f"[tool results: {call.call_id}=22C]" in second.output_text


def test_streamed_function_call_arguments(server: OpenAIServer) -> None:
    deltas: list[str] = []
    with server.client().responses.stream(
        model="gpt-5", input="weather", tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
    ) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                deltas.append(event.delta)
            if event.type == "response.function_call_arguments.done":
                assert json.loads(event.arguments) == {"city": "fake-city"}
        final = stream.get_final_response()
    assert len(deltas) >= 2 and json.loads("".join(deltas)) == {"city": "fake-city"}
    [call] = [o for o in final.output if o.type == "function_call"]
    assert call.arguments == "".join(deltas)


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_items_carry_the_thinking_back(server: OpenAIServer, stream: bool) -> None:
    client = server.client()
    conversation: list[Any] = [{"role": "user", "content": "Think, then call. [[fake:thinking]] [[fake:tool]]"}]
    options: dict[str, Any] = {"model": "gpt-5-codex", "tools": [WEATHER], "store": False,
                               "reasoning": {"effort": "low", "summary": "auto"},
                               "include": ["reasoning.encrypted_content"]}
    if stream:
        with client.responses.stream(input=conversation, **options) as events:
            summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
            first = events.get_final_response()
    else:
        first = client.responses.create(input=conversation, **options)
        summary = ""
    [reasoning] = [o for o in first.output if o.type == "reasoning"]
    assert reasoning.encrypted_content and reasoning.summary[0].text.startswith("The user said")
    if stream:
        assert summary == reasoning.summary[0].text
    [call] = [o for o in first.output if o.type == "function_call"]
    conversation += [item.model_dump(exclude_none=True) for item in first.output]
    conversation.append({"type": "function_call_output", "call_id": call.call_id, "output": "ok"})
    raw = client.responses.with_raw_response.create(input=conversation, **options)
    assert f"{call.call_id}=ok" in raw.parse().output_text
    # The fake verifies thinking signatures (400 otherwise); this is the block it accepted:
    assistant = server.upstream(raw.headers.get("x-request-id"))["body"]["messages"][1]["content"]
    assert assistant[0]["type"] == "thinking" and assistant[0]["thinking"] == reasoning.summary[0].text
    assert assistant[-1]["type"] == "tool_use" and assistant[-1]["id"] == call.call_id


class Weather(BaseModel):
    city: str
    celsius: int


def test_json_schema_text_format_parses_with_the_sdk(server: OpenAIServer) -> None:
    response = server.client().responses.parse(model="gpt-5", input="weather as JSON", text_format=Weather)
    assert response.output_parsed == Weather(city="fake-city", celsius=42)


@pytest.mark.parametrize("stream", [False, True])
def test_rate_limit_stays_429_with_retry_after(server: OpenAIServer, stream: bool) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        server.client().responses.create(model="gpt-5", input="[[fake:error=429]] [[fake:retry_after=9]]",
                                          stream=stream)
    assert caught.value.status_code == 429 and caught.value.response.headers["retry-after"] == "9"
    assert caught.value.code == "rate_limit_error"


def test_midstream_error_fails_the_response(server: OpenAIServer) -> None:
    kinds: list[str] = []
    failed: Any = None
    stream = server.client().responses.create(model="gpt-5", input="go [[fake:midstream_error]]", stream=True)
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.failed":
            failed = event.response
    assert "response.output_text.delta" in kinds
    assert kinds[-2:] == ["error", "response.failed"]
    assert failed.status == "failed" and failed.error.code == "server_error"


def test_prompt_cache_usage(server: OpenAIServer) -> None:
    request: dict[str, Any] = {"model": "gpt-5", "instructions": "Stable instructions. " * 30,
                               "input": f"cache me too {time.monotonic_ns()}"}
    client = server.client()
    client.responses.create(**request)
    again = client.responses.create(**request)
    assert again.usage is not None and again.usage.input_tokens_details.cached_tokens > 0
    assert again.usage.input_tokens > again.usage.input_tokens_details.cached_tokens
