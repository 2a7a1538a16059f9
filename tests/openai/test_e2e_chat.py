"""Chat Completions end to end: the official ``openai`` SDK -> ``ccproxy serve`` -> the fake
Anthropic upstream (its own process), checking both what the client gets and what the upstream
received."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx2 as httpx
import openai
import pytest
from pydantic import BaseModel

from tests.openai.conftest import CLIENT_KEY, IDENTITY, OpenAIServer, png_bytes, png_data_url

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_completion_reports_the_asked_model_and_sends_claude_the_translation(server: OpenAIServer) -> None:
    raw = server.client().chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": "hello"},
        ],
        max_completion_tokens=300,
        stop=["STOP"],
        user="member-1",
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == "gpt-4o"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "Echo: hello", "stop")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    seen = server.upstream(raw.headers.get("x-request-id"))
    body = seen["body"]
    assert (body["model"], body["max_tokens"], body["stop_sequences"]) == ("claude-sonnet-5-5", 300, ["STOP"])
    assert body["metadata"] == {"user_id": "member-1"}
    assert [b["text"] for b in body["system"]] == [IDENTITY, "Be terse.", "Use metric units."]
    assert CLIENT_KEY not in json.dumps(seen) and server.fake.fingerprint(CLIENT_KEY) not in json.dumps(seen)
    assert not any(h.startswith("x-stainless") for h in seen["headers"])


def test_stream_role_first_text_as_it_comes_usage_then_done(server: OpenAIServer) -> None:
    with server.client().chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream this please"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw_lines = [line for line in response.iter_lines() if line]
    assert raw_lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in raw_lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"]
             and c["choices"][0]["delta"].get("content")]
    assert len(texts) >= 3 and "".join(texts) == "Echo: stream this please"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert {c["model"] for c in chunks} == {"gpt-4o-mini"}


def test_tool_call_and_tool_result_round_trip(server: OpenAIServer) -> None:
    client = server.client()
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris? [[fake:tool]]"}]
    first = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("toolu_")
    assert json.loads(call.function.arguments) == {"city": "fake-city"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, tools=[WEATHER])
    final = raw.parse()
    # The fake answers with the tool results it saw, and refuses unknown tool_use ids (400).
    assert final.choices[0].message.content is not None
    assert f"[tool results: {call.id}=18C and sunny]" in final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"
    sent = server.upstream(raw.headers.get("x-request-id"))["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][-1] == {"type": "tool_use", "id": call.id, "name": "get_weather",
                                      "input": {"city": "fake-city"}}


def test_streamed_tool_calls_are_incremental_with_id_and_name_first(server: OpenAIServer) -> None:
    client = server.client()
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER],
        tool_choice="required", parallel_tool_calls=False, stream=True,
    )
    deltas = []
    finish = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            deltas.extend(chunk.choices[0].delta.tool_calls)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    rest = deltas[1:]
    assert len(rest) >= 2 and all(d.id is None and d.function and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "fake-city"}
    follow = client.chat.completions.create(model="gpt-4o", stream=True, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": deltas[0].id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": deltas[0].id, "content": "rain"},
    ])
    text = "".join(c.choices[0].delta.content or "" for c in follow if c.choices)
    assert f"[tool results: {deltas[0].id}=rain]" in text


def test_images_inline_and_by_url(server: OpenAIServer) -> None:
    raw = server.client().chat.completions.with_raw_response.create(model="gpt-4o", messages=[{
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": png_data_url(), "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ],
    }])
    content = raw.parse().choices[0].message.content or ""
    assert f"[saw 2 image(s): image/png {len(png_bytes())} bytes, url]" in content
    sent = server.upstream(raw.headers.get("x-request-id"))["body"]["messages"][0]["content"]
    assert sent[2]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}


def test_thinking_round_trip_with_the_message_as_received(server: OpenAIServer) -> None:
    client = server.client()
    messages: list[Any] = [{"role": "user", "content": "Think, then use the tool. [[fake:thinking]] [[fake:tool]]"}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, tools=[WEATHER], reasoning_effort="low")
    message = raw.parse().choices[0].message
    sent = server.upstream(raw.headers.get("x-request-id"))["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    extra = message.model_extra or {}
    assert extra["reasoning_content"].startswith("The user said")
    [block] = extra["thinking_blocks"]
    assert block["type"] == "thinking" and block["thinking"] == extra["reasoning_content"] and block["signature"]
    assert message.tool_calls is not None
    call_id = message.tool_calls[0].id
    messages += [message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call_id, "content": "ok"}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, tools=[WEATHER], reasoning_effort="low")
    assert f"{call_id}=ok" in (raw.parse().choices[0].message.content or "")
    # The fake checks thinking signatures (400 otherwise); this is what it accepted:
    assistant = server.upstream(raw.headers.get("x-request-id"))["body"]["messages"][1]["content"]
    assert assistant[0] == block
    assert assistant[-1]["type"] == "tool_use" and assistant[-1]["id"] == call_id


def test_a_tampered_signature_is_the_upstreams_400(server: OpenAIServer) -> None:
    client = server.client()
    first = client.chat.completions.create(model="gpt-4o", tools=[WEATHER], reasoning_effort="low",
                                           messages=[{"role": "user", "content": "[[fake:thinking]] [[fake:tool]]"}])
    back = first.choices[0].message.model_dump(exclude_none=True)
    back["thinking_blocks"][0]["signature"] = "forged"
    assert first.choices[0].message.tool_calls is not None
    call_id = first.choices[0].message.tool_calls[0].id
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", tools=[WEATHER], reasoning_effort="low", messages=[
            {"role": "user", "content": "hi"}, back, {"role": "tool", "tool_call_id": call_id, "content": "ok"}])
    assert caught.value.status_code == 400 and "signature" in caught.value.message


def test_streamed_thinking_comes_back_from_reasoning_content_alone(server: OpenAIServer) -> None:
    """A client that keeps only ``reasoning_content`` (as many do) still gets its thinking
    re-sent with the signature: this process remembers what it answered."""
    client = server.client()
    reasoning, blocks, calls = "", [], {}
    for chunk in client.chat.completions.create(
        model="gpt-4o", tools=[WEATHER], reasoning_effort="medium", stream=True,
        messages=[{"role": "user", "content": "[[fake:thinking]] [[fake:tool]] go"}],
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        reasoning += extra.get("reasoning_content") or ""
        blocks += extra.get("thinking_blocks") or []
        for call in delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"id": call.id, "name": None, "arguments": ""})
            if call.function and call.function.name:
                slot["name"] = call.function.name
            slot["arguments"] += (call.function.arguments or "") if call.function else ""
    assert reasoning.startswith("The user said") and blocks[0]["thinking"] == reasoning
    call = calls[0]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", tools=[WEATHER], reasoning_effort="medium", messages=[
            {"role": "user", "content": "[[fake:thinking]] [[fake:tool]] go"},
            {"role": "assistant", "content": "I'll call get_weather.", "reasoning_content": reasoning,
             "tool_calls": [{"id": call["id"], "type": "function",
                             "function": {"name": call["name"], "arguments": call["arguments"]}}]},
            {"role": "tool", "tool_call_id": call["id"], "content": "ok"},
        ])
    assistant = server.upstream(raw.headers.get("x-request-id"))["body"]["messages"][1]["content"]
    assert assistant[0] == blocks[0]


class Person(BaseModel):
    name: str
    age: int


def test_json_schema_mode_parses_with_the_sdks_structured_outputs(server: OpenAIServer) -> None:
    completion = server.client().chat.completions.parse(
        model="gpt-4o", messages=[{"role": "user", "content": "Who wrote the first program?"}], response_format=Person)
    message = completion.choices[0].message
    assert message.parsed == Person(name="fake-name", age=42)
    assert completion.choices[0].finish_reason == "stop"


def test_json_object_mode_streams_json(server: OpenAIServer) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "items": {
        "type": "array", "items": {"type": "string"}}}, "required": ["ok", "items"]}
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in server.client().chat.completions.create(
            model="gpt-4o", stream=True, messages=[{"role": "user", "content": "list"}],
            response_format={"type": "json_schema", "json_schema": {"name": "listing", "schema": schema}},
        )
        if chunk.choices
    )
    assert json.loads(text) == {"ok": True, "items": ["fake-items"]}
    plain = server.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "anything"}], response_format={"type": "json_object"})
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(("status", "error_class", "openai_type", "code"), [
    (429, openai.RateLimitError, "rate_limit_exceeded", "rate_limit_error"),
    (529, openai.InternalServerError, "server_error", "overloaded_error"),
    (401, openai.AuthenticationError, "authentication_error", "authentication_error"),
    (400, openai.BadRequestError, "invalid_request_error", "invalid_request_error"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_keep_their_status_in_openai_format(
    server: OpenAIServer, status: int, error_class: type[openai.APIStatusError], openai_type: str, code: str,
    stream: bool,
) -> None:
    with pytest.raises(error_class) as caught:
        server.client().chat.completions.create(
            model="gpt-4o", stream=stream,
            messages=[{"role": "user", "content": f"[[fake:error={status}]] [[fake:retry_after=7]]"}])
    err = caught.value
    assert err.status_code == status
    assert err.type == openai_type and err.code == code and err.message
    body = err.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if status == 429:
        assert err.response.headers["retry-after"] == "7"


def test_midstream_error_raises_in_the_sdk_after_the_text_so_far(server: OpenAIServer) -> None:
    stream = server.client().chat.completions.create(
        model="gpt-4o", stream=True, messages=[{"role": "user", "content": "go [[fake:midstream_error]]"}])
    text = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text  # what arrived before the error was delivered
    assert "overloaded" in caught.value.message.lower() or "Overloaded" in str(caught.value.body)


@pytest.mark.parametrize(("payload", "content_type", "status", "param"), [
    (b'{"model": "gpt-4o", "messages": [', "application/json", 400, None),
    (b'["not", "an", "object"]', "application/json", 400, None),
    (b"model=gpt-4o", "application/x-www-form-urlencoded", 415, None),
    (json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 3}).encode(),
     "application/json", 400, "n"),
    (json.dumps({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
     "application/json", 400, "messages.0"),
    (json.dumps({"model": "gpt-4o"}).encode(), "application/json", 400, "messages"),
])
def test_bad_requests_are_openai_errors(server: OpenAIServer, payload: bytes, content_type: str, status: int,
                                        param: str | None) -> None:
    for path in ("/chat/completions", "/responses"):
        if path == "/responses" and param is not None:
            continue  # those bodies are chat-shaped
        response = httpx.post(server.base_url + path, content=payload, headers={"content-type": content_type},
                              timeout=10)
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]
        if param is not None:
            assert error["param"] and error["param"].startswith(param)


def test_models_lists_claude_models_and_openai_aliases(server: OpenAIServer) -> None:
    ids = [m.id for m in server.client().models.list()]
    assert "claude-sonnet-4-5-20250929" in ids and "gpt-4o" in ids and "o3" in ids


async def test_concurrent_streams_do_not_mix(server: OpenAIServer) -> None:
    client = server.async_client()

    async def one(n: int) -> str:
        stream = await client.chat.completions.create(
            model="gpt-4o", stream=True, messages=[{"role": "user", "content": f"number {n} [[fake:slow=0.02]]"}])
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    texts = await asyncio.gather(*(one(n) for n in range(6)))
    assert texts == [f"Echo: number {n}" for n in range(6)]
    await client.close()


def test_a_client_that_goes_away_stops_the_upstream_stream(server: OpenAIServer) -> None:
    marker = f"leave-early-{time.monotonic_ns()}"
    stream = server.client().chat.completions.create(
        model="gpt-4o", stream=True,
        messages=[{"role": "user", "content": f"{marker} [[fake:long=400]] [[fake:slow=0.02]]"}])
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 3:
            break
    stream.close()
    deadline = time.monotonic() + 10
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        [record] = [r for r in server.fake.requests(path="/v1/messages") if marker in json.dumps(r["body"])]
        if record["outcome"] == "disconnected":
            break
        time.sleep(0.05)
    assert record["outcome"] == "disconnected"
    assert record["events_sent"] < record["events_total"]


def test_prompt_cache_usage_is_reported_like_openai(server: OpenAIServer) -> None:
    """ccproxy marks the prompt for Claude's cache; the second identical turn reads it, and the
    usage says so in OpenAI's terms (cached tokens inside prompt_tokens)."""
    messages = [{"role": "system", "content": "A long, stable system prompt. " * 20},
                {"role": "user", "content": f"cache me {time.monotonic_ns()}"}]
    client = server.client()
    first = client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    second = client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert first.usage and first.usage.prompt_tokens_details and second.usage and second.usage.prompt_tokens_details
    written = first.usage.prompt_tokens_details.cache_write_tokens
    assert written and first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == written
    assert second.usage.prompt_tokens == first.usage.prompt_tokens  # cached tokens are inside the total
