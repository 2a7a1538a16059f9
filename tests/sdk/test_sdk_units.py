"""The pure parts of SDK mode, without the CLI: SDK messages to events, the option allow-list, the
history transcript, collecting a stream into a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import AssistantMessage, ResultMessage, StreamEvent, TextBlock, ToolUseBlock, UserMessage
from claude_agent_sdk.types import ToolResultBlock

from ccproxy_core.errors import ProxyError
from ccproxy_core.sdk_jobs import session_uuid
from ccproxy_core.sdk_options import check_overrides, resolve_cwd
from ccproxy_core.settings import Settings
from ccproxy_gateway.sdk_routes import accumulate
from ccproxy_sdk_worker.convert import EventBuilder, RunFailed
from ccproxy_sdk_worker.transcript import split_conversation, transcript


def stream(msg_id: str, text: str) -> list[StreamEvent]:
    events = [
        {"type": "message_start", "message": {"id": msg_id, "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "Read"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 2}},
        {"type": "message_stop"},
    ]
    return [StreamEvent(uuid=str(i), session_id="s", event=e) for i, e in enumerate(events)]


def result(**kw: Any) -> ResultMessage:
    base: dict[str, Any] = {
        "subtype": "success", "duration_ms": 10, "duration_api_ms": 5, "is_error": False, "num_turns": 2,
        "session_id": "s", "stop_reason": "end_turn", "total_cost_usd": 0.25,
        "usage": {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 5},
    }
    return ResultMessage(**{**base, **kw})


def run(builder: EventBuilder, messages: list[object]) -> list[tuple[str, dict[str, Any]]]:
    return [event for message in messages for event in builder.feed(message)]


TOOL_TURN: list[object] = [
    *stream("m1", "Let me look."),
    AssistantMessage(content=[TextBlock("Let me look."), ToolUseBlock("t1", "Read", {"file_path": "/w/a"})],
                     model="m", message_id="m1"),
    UserMessage(content=[ToolResultBlock("t1", "hello", False)]),
]


def test_one_message_no_duplicated_text_and_forwarded_tool_blocks() -> None:
    events = run(EventBuilder("msg_x", "m"), [*TOOL_TURN, *stream("m2", "Done."), result()])
    names = [n for n, _ in events]
    assert names.count("message_start") == 1 and names[-2:] == ["message_delta", "message_stop"]
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    text = "".join(d["text"] for d in deltas if d["type"] == "text_delta")
    assert text == "Let me look.Done."  # the complete AssistantMessage did not repeat it
    starts = [d for n, d in events if n == "content_block_start"]
    assert [d["index"] for d in starts] == [0, 1, 2, 3]
    assert [d["content_block"]["type"] for d in starts] == ["text", "tool_use_sdk", "tool_result_sdk", "text"]
    assert starts[1]["content_block"]["input"] == {"file_path": "/w/a"}
    assert not any(d.get("delta", {}).get("type") == "input_json_delta" for _, d in events)
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["input_tokens"] == 11 and final["usage"]["cache_read_input_tokens"] == 5


def test_text_that_did_not_stream_comes_from_the_full_message() -> None:
    builder = EventBuilder("msg_x", "m", mode="ignore")
    events = run(builder, [AssistantMessage(content=[TextBlock("whole")], model="m", message_id="m9"), result()])
    assert [d["delta"]["text"] for n, d in events if n == "content_block_delta"] == ["whole"]
    assert builder.result.cost_usd == 0.25 and builder.result.num_turns == 2


def test_a_run_cut_short_reports_the_usage_of_the_calls_it_made() -> None:
    builder = EventBuilder("msg_x", "m")
    # A finished turn, a subagent's call in flight, and a main call cut off after message_start.
    sub = [StreamEvent(uuid="s1", session_id="s", parent_tool_use_id="t1",
                       event={"type": "message_start", "message": {"id": "m5", "usage": {"input_tokens": 40}}})]
    late = [StreamEvent(uuid="l1", session_id="s", event={
        "type": "message_start", "message": {"id": "m2", "usage": {"input_tokens": 9, "cache_read_input_tokens": 4,
                                                                   "output_tokens": 1}}})]
    run(builder, [*TOOL_TURN, *sub, *late])
    spent = builder.spent()
    assert (spent.input_tokens, spent.output_tokens, spent.cache_read_tokens) == (3 + 40 + 9, 2 + 1, 4)
    # Once Claude Code's own result came, that is the account.
    run(builder, [result()])
    assert (builder.spent().input_tokens, builder.spent().output_tokens) == (11, 7)


def test_formatted_mode_pretty_and_compact() -> None:
    for pretty, marker in ((True, '\n  "name": "Read"'), (False, '"name":"Read"')):
        events = run(EventBuilder("msg_x", "m", mode="formatted", pretty=pretty), [*TOOL_TURN, result()])
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert "<tool_use_sdk>" in text and "<tool_result_sdk>" in text and marker in text
        assert all(d["content_block"]["type"] == "text" for n, d in events if n == "content_block_start")


def test_upstream_error_becomes_a_run_failure_with_its_status() -> None:
    with pytest.raises(RunFailed) as caught:
        run(EventBuilder("msg_x", "m"), [result(is_error=True, api_error_status=429, errors=["rate limited"])])
    assert caught.value.status == 429 and "rate limited" in caught.value.message


def test_accumulate_builds_the_message() -> None:
    events = run(EventBuilder("msg_x", "m"), [*TOOL_TURN, *stream("m2", "Done."), result()])
    message = accumulate(events)
    assert message["id"] == "msg_x" and message["stop_reason"] == "end_turn"
    assert [b["type"] for b in message["content"]] == ["text", "tool_use_sdk", "tool_result_sdk", "text"]
    assert message["content"][3]["text"] == "Done." and message["usage"]["output_tokens"] == 7


def test_allow_list_and_workspace(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    settings = Settings(claude={"workspace_root": root})
    assert check_overrides({"cwd": "sub", "max_turns": 3}, settings) == {"cwd": "sub", "max_turns": 3}
    assert resolve_cwd("sub", root.resolve()) == (root / "sub").resolve()
    for options, status in [
        ({"cwd": "escape"}, 403),  # a symlink out of the workspace
        ({"cwd": "sub/../../x"}, 403),
        ({"permission_mode": "bypassPermissions"}, 403),
        ({"allowed_tools": ["Bash"]}, 403),
        ({"mcp_servers": {}}, 403),
        ({"bogus": 1}, 400),
        ({"permission_mode": "yolo"}, 400),
        ("not an object", 400),
    ]:
        with pytest.raises(ProxyError) as caught:
            check_overrides(options, settings)
        assert caught.value.status == status, options
    # The allow-list is a setting; mcp_servers stays refused even when listed. A listed option
    # still only narrows: a request pre-approves only tools the operator pre-approved.
    wide = Settings(claude={"workspace_root": root, "overridable_options": ["allowed_tools", "mcp_servers"],
                            "options": {"allowed_tools": ["Read", "Grep"]}})
    assert check_overrides({"allowed_tools": ["Read"]}, wide) == {"allowed_tools": ["Read"]}
    for refused in ({"mcp_servers": {}}, {"allowed_tools": ["Read", "Bash"]}):
        with pytest.raises(ProxyError) as caught:
            check_overrides(refused, wide)
        assert caught.value.status == 403


def test_history_transcript() -> None:
    body = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "hello"},
            {"type": "tool_use_sdk", "id": "x", "name": "Read", "input": {}},
        ]},
        {"role": "user", "content": "now"},
    ]}
    history, last = split_conversation(body)
    assert last["content"] == "now"
    entries = transcript(history, "sid", "/w", "m")
    assert [e["type"] for e in entries] == ["user", "assistant"]
    assert entries[1]["parentUuid"] == entries[0]["uuid"] and entries[0]["parentUuid"] is None
    assert entries[0]["message"]["content"] == [{"type": "text", "text": "hi"}]
    assert entries[1]["message"]["content"] == [{"type": "text", "text": "hello"}]  # ccproxy's own block dropped
    with pytest.raises(ProxyError):
        split_conversation({"messages": [{"role": "assistant", "content": "x"}]})
    assert session_uuid("my chat") == session_uuid("my chat") != session_uuid("other")
    assert session_uuid("demo", "alice") != session_uuid("demo", "carol")  # a name is its key's own
    assert session_uuid("7f0c2f5e-0000-4000-8000-000000000000") == "7f0c2f5e-0000-4000-8000-000000000000"
