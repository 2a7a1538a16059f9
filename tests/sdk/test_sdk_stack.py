"""SDK mode through the stack: client -> Traefik -> gateway -> arq (real Redis) -> sdk-worker ->
the real Claude Code CLI -> the fake upstream, and back as Anthropic or OpenAI answers."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import anthropic
import openai
import pytest
import redis

from tests.sdk.conftest import SdkSetup, cli_processes
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import SHARED_REDIS

pytestmark = [pytest.mark.claude_cli, pytest.mark.timeout(240)]

MODEL = "claude-sonnet-4-5"
#: A 1x1 PNG, so the fake can check the image arrived intact.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def client(setup: SdkSetup, session: str | None = None) -> anthropic.Anthropic:
    base = f"{setup.url}/sdk/{session}" if session else f"{setup.url}/sdk"
    return anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=120)


def texts(content: list[Any]) -> str:
    return "".join(getattr(b, "text", "") for b in content if getattr(b, "type", None) == "text")


def http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def upstream_bodies(fake: FakeUpstream, needle: str) -> list[dict[str, Any]]:
    """Bodies of the CLI's upstream requests whose messages mention ``needle``."""
    return [r["body"] for r in fake.requests(path="/v1/messages") if needle in json.dumps(r.get("body"))]


def test_messages_non_streaming(sdk_stack: SdkSetup, fake_upstream: FakeUpstream) -> None:
    word = uuid.uuid4().hex[:8]
    raw = client(sdk_stack).messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": f"say {word}"}]
    )
    message = raw.parse()
    assert raw.http_response.status_code == 200
    assert f"say {word}" in texts(message.content)  # the fake echoes what Claude Code sent it
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    session = raw.headers["x-claude-session-id"]
    assert uuid.UUID(session)
    # It really went through Claude Code: its identity, its tools, its session header upstream.
    [body] = upstream_bodies(fake_upstream, f"say {word}")
    assert len(body["tools"]) > 5
    assert any(r["headers"].get("x-claude-code-session-id") == session for r in fake_upstream.requests())
    # Through the gateway: Claude Code holds a run token, the api-forwarder sent the account's
    # login, and the call is an /api request of the run's caller, marked with its session.
    [call] = [r for r in fake_upstream.requests(path="/v1/messages") if f"say {word}" in json.dumps(r["body"])]
    assert call["auth"]["kind"] == "oauth"

    def api_events() -> list[dict[str, Any]]:
        stream = redis.Redis.from_url(SHARED_REDIS).xrange(sdk_stack.key_prefix + "access-log")
        events = [json.loads(fields[b"e"]) for _, fields in stream]
        return [e for e in events if e["sdk_session_id"] == session and e["endpoint"] == "/api/v1/messages"]

    assert wait_until(api_events, timeout=15, message="the run's call in the access log")[0]["status"] == 200


def test_messages_streaming_with_a_real_tool_use(sdk_stack: SdkSetup) -> None:
    """Claude Code reads a workspace file (scripted by the fake); the stream shows the tool use and
    its result as blocks of their own (forward mode), then the answer with the file's content."""
    prompt = f"read it [[fake:call=Read?file_path={sdk_stack.notes}]]"
    events = list(client(sdk_stack).messages.create(
        model=MODEL, max_tokens=200, stream=True, messages=[{"role": "user", "content": prompt}]
    ))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1
    starts = [e for e in events if e.type == "content_block_start"]
    assert [e.index for e in starts] == list(range(len(starts)))  # one message, blocks renumbered
    assert len([e for e in events if e.type == "content_block_stop"]) == len(starts)
    blocks = [e.content_block.model_dump() for e in starts]
    tool_use = next(b for b in blocks if b["type"] == "tool_use_sdk")
    assert tool_use["name"] == "Read" and tool_use["input"] == {"file_path": str(sdk_stack.notes)}
    result = next(b for b in blocks if b["type"] == "tool_result_sdk")
    assert result["tool_use_id"] == tool_use["id"] and sdk_stack.notes_text in json.dumps(result["content"])
    assert not any(b["type"] == "tool_use" for b in blocks)  # never a tool call the client would run
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert sdk_stack.notes_text in text  # Claude's final answer carries the tool result
    assert text.count("I'll call Read.") == 1  # streamed once, not again from the full message
    assert events[-2].delta.stop_reason == "end_turn"


def test_openai_chat_streaming_and_not(sdk_stack: SdkSetup) -> None:
    oai = openai.OpenAI(base_url=f"{sdk_stack.url}/sdk/v1", api_key="unused", max_retries=0, timeout=120)
    word = uuid.uuid4().hex[:8]
    completion = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {word}"}]
    )
    assert f"hi {word}" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert not completion.choices[0].message.tool_calls

    prompt = f"read [[fake:call=Read?file_path={sdk_stack.notes}]]"
    chunks = list(oai.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": prompt}]
    ))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_use_sdk>" in content and "<tool_result_sdk>" in content  # shown, not as tool_calls
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert sdk_stack.notes_text in content
    assert chunks[-1].choices[0].finish_reason == "stop"

    response = oai.responses.create(model=MODEL, input=f"respond {word}")
    assert f"respond {word}" in response.output_text


def test_openai_responses_continue_from_the_store(sdk_stack: SdkSetup, fake_upstream: FakeUpstream) -> None:
    """``/sdk/v1/responses`` keeps its responses too: ``previous_response_id`` brings the earlier
    turn back to Claude Code, and the stored response reads back under ``/sdk/v1``."""
    oai = openai.OpenAI(base_url=f"{sdk_stack.url}/sdk/v1", api_key="unused", max_retries=0, timeout=120)
    word = uuid.uuid4().hex[:8]
    first = oai.responses.create(model=MODEL, input=f"first {word}")
    assert first.store is True
    second = oai.responses.create(model=MODEL, input=f"second {word}", previous_response_id=first.id)
    assert f"second {word}" in second.output_text and second.previous_response_id == first.id
    [body] = upstream_bodies(fake_upstream, f"second {word}")
    seen = json.dumps(body["messages"])
    assert f"first {word}" in seen and json.dumps(first.output_text)[1:-1] in seen  # both sides of turn one
    assert oai.responses.retrieve(second.id).output_text == second.output_text


def test_history_reaches_claude_code_with_images(sdk_stack: SdkSetup, fake_upstream: FakeUpstream) -> None:
    name = f"Zorro{uuid.uuid4().hex[:6]}"
    message = client(sdk_stack).messages.create(
        model=MODEL, max_tokens=100, system="You are terse.",
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": f"My name is {name}. Here is a picture."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ]},
            {"role": "assistant", "content": f"Nice to meet you, {name}."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is my name? And this one?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ]},
        ],
    )
    assert "[saw 1 image(s): image/png" in texts(message.content)  # the new image arrived intact
    [body] = upstream_bodies(fake_upstream, "What is my name? And this one?")
    turns = [(m["role"], json.dumps(m["content"])) for m in body["messages"] if m["role"] != "system"]
    first = next(i for i, (role, c) in enumerate(turns) if role == "user" and f"My name is {name}" in c)
    assert '"image"' in turns[first][1]  # the earlier image too
    assert turns[first + 1][0] == "assistant" and f"Nice to meet you, {name}." in turns[first + 1][1]
    assert any("You are terse." in json.dumps(b) for b in body["system"])  # appended to Claude Code's


def test_session_resume_by_path_and_header(sdk_stack: SdkSetup, fake_upstream: FakeUpstream) -> None:
    session = f"my-session-{uuid.uuid4().hex[:6]}"  # any name; mapped to a Claude Code session id
    code = uuid.uuid4().hex[:8]
    raw = client(sdk_stack, session).messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": f"remember {code}"}]
    )
    claude_session = raw.headers["x-claude-session-id"]
    # Second turn: only the new message is sent, by header this time; Claude Code has the rest.
    raw2 = client(sdk_stack).messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "what was the code?"}],
        extra_headers={"x-claude-session-id": session},
    )
    assert raw2.headers["x-claude-session-id"] == claude_session
    [body] = upstream_bodies(fake_upstream, "what was the code?")
    seen = json.dumps(body["messages"])
    assert f"remember {code}" in seen and "Echo: " in seen  # the first turn, both sides of it
    assert any(r["headers"].get("x-claude-code-session-id") == claude_session
               for r in fake_upstream.requests() if "what was the code?" in json.dumps(r.get("body")))
    r = redis.Redis.from_url(SHARED_REDIS)
    try:
        assert r.exists(f"{sdk_stack.key_prefix}sdk:transcript:{claude_session}")
        assert r.hget(f"{sdk_stack.key_prefix}sdk:session:{claude_session}", "worker")
    finally:
        r.close()


def test_option_allow_list(sdk_stack: SdkSetup, fake_upstream: FakeUpstream) -> None:
    c = client(sdk_stack)
    msgs = [{"role": "user", "content": "hello"}]
    for options, status, fragment in [
        ({"permission_mode": "bypassPermissions"}, 403, "bypassPermissions"),
        ({"cwd": "/etc"}, 403, "outside the workspace root"),
        ({"cwd": "../.."}, 403, "outside the workspace root"),
        ({"mcp_servers": {"x": {"command": "sh"}}}, 403, "may not be set per request"),
        ({"allowed_tools": ["Bash"]}, 403, "may not be set per request"),
        ({"no_such_option": 1}, 400, "unknown option"),
        ({"max_turns": "many"}, 400, "max_turns"),
    ]:
        with pytest.raises(anthropic.APIStatusError) as caught:
            c.messages.create(model=MODEL, max_tokens=10, messages=msgs, extra_body={"claude_options": options})
        assert caught.value.status_code == status, options
        assert fragment in caught.value.message, (options, caught.value.message)
    # Allowed ones are applied: the model, and a cwd inside the workspace.
    (sdk_stack.workspace / "sub").mkdir(exist_ok=True)
    word = uuid.uuid4().hex[:8]
    message = c.messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": f"pwd {word}"}],
        extra_body={"claude_options": {"model": "claude-haiku-4-5", "cwd": "sub"}},
    )
    assert f"pwd {word}" in texts(message.content)
    [body] = upstream_bodies(fake_upstream, f"pwd {word}")
    assert body["model"] == "claude-haiku-4-5"
    assert str(sdk_stack.workspace / "sub") in json.dumps(body)  # Claude Code's environment names its cwd


def test_disconnect_cancels_the_run_and_stops_the_cli(sdk_stack: SdkSetup, fake_upstream: FakeUpstream) -> None:
    word = uuid.uuid4().hex[:8]
    stream = client(sdk_stack).messages.create(
        model=MODEL, max_tokens=50, stream=True, messages=[{"role": "user", "content": f"stall {word} [[fake:stall]]"}]
    )
    with stream:
        assert next(iter(stream)).type == "message_start"
        pids = wait_until(lambda: cli_processes(sdk_stack.key_prefix), timeout=20, message="the CLI running")
    # The client is gone: the worker must stop Claude Code within seconds.
    started = time.monotonic()
    wait_until(lambda: not any(p in cli_processes(sdk_stack.key_prefix) for p in pids), timeout=15,
               message="the CLI process to go away")
    assert time.monotonic() - started < 15
    record = wait_until(
        lambda: next((r for r in fake_upstream.requests(path="/v1/messages")
                      if word in json.dumps(r.get("body")) and r["outcome"] == "disconnected"), None),
        timeout=10, message="the fake to see the CLI's request dropped",
    )
    assert record["events_sent"] < record["events_total"]
    # The worker is free again.
    again = [{"role": "user", "content": "again"}]
    message = client(sdk_stack).messages.create(model=MODEL, max_tokens=10, messages=again)
    assert "again" in texts(message.content)


def test_two_workers_share_the_queue(sdk_stack: SdkSetup, start_worker: Any) -> None:
    start_worker(sdk_stack, CLAUDE__MAX_CONCURRENT_RUNS="1")
    results: dict[int, Any] = {}

    def ask(i: int) -> None:
        results[i] = client(sdk_stack).messages.with_raw_response.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": f"job {i} [[fake:slow=0.3]]"}]
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert sorted(results) == [0, 1]
    workers = set()
    r = redis.Redis.from_url(SHARED_REDIS)
    try:
        for i, raw in results.items():
            assert f"job {i}" in texts(raw.parse().content)
            session = raw.headers["x-claude-session-id"]
            workers.add(r.hget(f"{sdk_stack.key_prefix}sdk:session:{session}", "worker"))
    finally:
        r.close()
    assert len(workers) == 2, workers  # each worker runs one at a time, so both took one


def test_status_models_and_errors(sdk_stack: SdkSetup) -> None:
    code, status = http_json(f"{sdk_stack.url}/sdk/status")
    assert code == 200 and status["mode"] == "sdk" and status["queue"]["queued"] == 0
    # A worker reports itself within its first poll of the queue.
    workers = wait_until(lambda: http_json(f"{sdk_stack.url}/sdk/status")[1]["workers"], timeout=10,
                         message="a live worker in /sdk/status")
    assert all(isinstance(w, str) and w for w in workers)
    assert http_json(f"{sdk_stack.url}/sdk/v1/models")[1]["data"]
    assert http_json(f"{sdk_stack.url}/sdk/models")[0] == 200
    # An upstream error before any output keeps its status; OpenAI clients get it in their format.
    with pytest.raises(anthropic.BadRequestError):
        client(sdk_stack).messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x [[fake:error=400]]"}]
        )
    code, body = http_json(f"{sdk_stack.url}/sdk/v1/chat/completions",
                           {"model": MODEL, "messages": [{"role": "assistant", "content": "no user turn"}]})
    assert code == 400 and body["error"]["message"]


def test_a_dead_worker_ends_the_stream_with_an_error(sdk_stack: SdkSetup) -> None:
    """A worker killed mid-run writes nothing more; the gateway notices (its health key expires)
    and ends the client's stream with an error instead of waiting for the run timeout."""
    assert sdk_stack.stack is not None
    stream = client(sdk_stack).messages.create(
        model=MODEL, max_tokens=50, stream=True, messages=[{"role": "user", "content": "doomed [[fake:stall]]"}]
    )
    with stream:
        events = iter(stream)
        assert next(events).type == "message_start"
        wait_until(lambda: cli_processes(sdk_stack.key_prefix), timeout=20, message="the CLI running")
        sdk_stack.stack.kill("sdk-worker")
        killed = time.monotonic()
        with pytest.raises(anthropic.APIStatusError) as caught:
            for _ in events:
                pass
    assert "stopped" in str(caught.value)
    assert time.monotonic() - killed < 30
    sdk_stack.stack.start("sdk-worker", timeout=30)
    message = client(sdk_stack).messages.create(model=MODEL, max_tokens=10,
                                               messages=[{"role": "user", "content": "revived"}])
    assert "revived" in texts(message.content)
