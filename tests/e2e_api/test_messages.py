"""The Messages API through ``ccproxy serve`` with the official anthropic SDK as the client:
text, streaming, tool use, thinking, images, count_tokens, and the Claude Code CLI's odd bodies."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx2 as httpx

from tests.e2e_api.conftest import CLIENT_KEY, MODEL, ApiServer

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
        "required": ["city", "days", "metric"],
    },
}


def test_text_not_streamed(api: ApiServer) -> None:
    msg = api.client().messages.create(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "hello there"}]
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "Echo: hello there"
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    seen = api.upstream(msg._request_id)
    assert seen["path"] == "/v1/messages" and seen["status"] == 200
    assert seen["headers"]["authorization"] == f"Bearer {api.access_token}"


def test_text_streamed(api: ApiServer) -> None:
    deltas: list[str] = []
    with api.client().messages.stream(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "one two three four five six"}]
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)
        final = stream.get_final_message()
    assert len(deltas) >= 4, "the text arrives in several deltas"
    assert "".join(deltas) == final.content[0].text == "Echo: one two three four five six"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_tool_use_round_trip(api: ApiServer) -> None:
    client = api.client()
    question = {"role": "user", "content": "What is the weather in Paris? [[fake:tool]]"}
    with client.messages.stream(model=MODEL, max_tokens=300, tools=[WEATHER_TOOL], messages=[question]) as stream:
        json_deltas = [e.delta.partial_json for e in stream
                       if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        first = stream.get_final_message()
    assert len(json_deltas) >= 3, "tool input JSON arrives split across input_json_deltas"
    assert first.stop_reason == "tool_use"
    tool_use = next(b for b in first.content if b.type == "tool_use")
    assert tool_use.name == "get_weather" and tool_use.input == {"city": "fake-city", "days": 42, "metric": True}
    assert json.loads("".join(json_deltas)) == tool_use.input
    second = client.messages.create(
        model=MODEL, max_tokens=300, tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny, 21C"}]},
        ],
    )
    assert f"[tool results: {tool_use.id}=sunny, 21C]" in second.content[0].text


def test_tool_choice_is_honoured(api: ApiServer) -> None:
    other = {"name": "other_tool", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}}
    msg = api.client().messages.create(
        model=MODEL, max_tokens=100, tools=[WEATHER_TOOL, other],
        tool_choice={"type": "tool", "name": "other_tool"},
        messages=[{"role": "user", "content": "anything"}],
    )
    assert [b.name for b in msg.content if b.type == "tool_use"] == ["other_tool"]


def test_thinking_with_signature_round_trip(api: ApiServer) -> None:
    client = api.client()
    question = {"role": "user", "content": "think first [[fake:thinking]]"}
    kinds = []
    with client.messages.stream(
        model=MODEL, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}, messages=[question]
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                kinds.append(event.delta.type)
        first = stream.get_final_message()
    assert "thinking_delta" in kinds and kinds.count("signature_delta") == 1
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.signature and "think first" in thinking.thinking
    # The signed thinking block goes back upstream byte-identical, or the fake refuses it.
    follow = client.messages.create(
        model=MODEL, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[question, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                  {"role": "user", "content": "and now?"}],
    )
    assert follow.content[-1].text == "Echo: and now?"
    forged = thinking.model_dump() | {"signature": base64.b64encode(b"not-signed-by-upstream").decode()}
    try:
        client.messages.create(
            model=MODEL, max_tokens=2000,
            messages=[question, {"role": "assistant", "content": [forged]}, {"role": "user", "content": "x"}],
        )
    except anthropic.BadRequestError as exc:
        assert "signature" in str(exc)
    else:
        raise AssertionError("a forged thinking signature must be refused by the upstream")


def test_base64_image(api: ApiServer) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4000  # ~1 MB
    msg = api.client().messages.create(
        model=MODEL, max_tokens=100,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png).decode()}},
            {"type": "text", "text": "what is this"},
        ]}],
    )
    assert msg.content[0].text == f"Echo: what is this [saw 1 image(s): image/png {len(png)} bytes]"


def test_prefilled_assistant_turn(api: ApiServer) -> None:
    msg = api.client().messages.create(
        model=MODEL, max_tokens=100,
        messages=[{"role": "user", "content": "give json [[fake:json]]"}, {"role": "assistant", "content": "{"}],
    )
    assert json.loads("{" + msg.content[0].text) == {"echo": "give json", "ok": True, "n": 9}


def test_count_tokens(api: ApiServer) -> None:
    client = api.client()
    small = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    big = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi " * 2000}])
    assert 0 < small.input_tokens < big.input_tokens
    seen = api.fake.requests(path="/v1/messages/count_tokens", token=api.access_token)
    assert len(seen) == 2 and "max_tokens" not in seen[-1]["body"]


def test_claude_code_style_body_passes_unchanged(api: ApiServer) -> None:
    """What the Claude Code CLI sends: ``?beta=true``, ``role: system`` entries, adaptive thinking,
    output_config, context_management, unknown fields and blocks, a big body."""
    body = {
        "model": MODEL,
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cc_entrypoint=cli;"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "padding " * 40000}]},
            {"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "opaque-blob"},
                {"type": "text", "text": "ok"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"q": "x"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            ]},
            {"role": "system", "content": "A system entry inside messages."},
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
                {"type": "some_future_block", "payload": {"nested": [1, 2, 3]}},
                {"type": "text", "text": "hi from the CLI", "cache_control": {"type": "ephemeral"}},
            ]},
        ],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "user_abc_account_def_session_ghi"},
        "a_field_from_the_future": {"deep": {"er": [None, True, 1.5]}},
        "tools": [WEATHER_TOOL],
        "stream": False,
    }
    headers = {
        "x-api-key": CLIENT_KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14,"
        "context-management-2025-06-27",
        "x-claude-code-session-id": "3c6f2d5e-session",
        "x-app": "cli",
        "user-agent": "claude-cli/2.1.332 (external, cli)",
    }
    raw = json.dumps(body).encode()
    assert len(raw) > 300_000
    resp = httpx.post(api.url + "/api/v1/messages?beta=true", content=raw, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"][0]["text"] == "Echo: hi from the CLI"
    seen = api.upstream(resp.headers.get("request-id"))
    assert seen["query"] == {"beta": "true"}
    assert seen["body"] == body, "the body reached the upstream unchanged"
    assert seen["headers"]["x-claude-code-session-id"] == "3c6f2d5e-session"
    assert seen["headers"]["user-agent"] == "claude-cli/2.1.332 (external, cli)"
    assert seen["headers"]["anthropic-beta"].split(",") == headers["anthropic-beta"].split(",")


def test_head_preflight(api: ApiServer) -> None:
    assert httpx.head(api.url + "/api").status_code == 200
    assert httpx.head(api.url + "/api/").status_code == 200


def test_reachability_probes_under_the_base_url_answer(api: ApiServer) -> None:
    # Claude Code (2.1.x through claude-agent-sdk) sends HEAD {base}/api/hello before its first call.
    for path in ("/api", "/api/api/hello", "/sdk/api/hello"):
        assert httpx.head(api.url + path, timeout=10).status_code == 200, path
    # The probe route shadows nothing: a POST still reaches the Messages route and its validation.
    answer = httpx.post(api.url + "/api/v1/messages", json={}, timeout=10)
    assert answer.status_code == 400 and "model" in answer.json()["error"]["message"]
