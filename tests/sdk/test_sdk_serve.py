"""SDK mode in ``ccproxy serve``: the same worker code in process, on the embedded Redis; the
``formatted`` and ``ignore`` message modes; a request that waits too long for a worker gets 503."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.sdk.conftest import SdkSetup, cli_processes, launch_sdk_serve
from tests.support.fake import FakeUpstream
from tests.support.process import Proc, wait_until

pytestmark = [pytest.mark.claude_cli, pytest.mark.timeout(240)]

MODEL = "claude-sonnet-4-5"


@pytest.fixture(scope="module")
def formatted(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[SdkSetup]:
    # The flags of earlier ccproxy versions, on top of an environment that says otherwise.
    setup, proc = launch_sdk_serve(
        tmp_path_factory.mktemp("sdk-formatted"), fake_upstream,
        args=["--claude-sdk-message-mode", "formatted", "--no-claude-sdk-pretty-format"],
        CLAUDE__SDK_MESSAGE_MODE="ignore", CLAUDE__PRETTY_FORMAT="true",
    )
    yield setup
    proc.stop()


@pytest.fixture(scope="module")
def ignoring(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[tuple[SdkSetup, Proc]]:
    """One run at a time, and a short queue timeout."""
    setup, proc = launch_sdk_serve(
        tmp_path_factory.mktemp("sdk-ignore"), fake_upstream,
        CLAUDE__SDK_MESSAGE_MODE="ignore", CLAUDE__MAX_CONCURRENT_RUNS="1", CLAUDE__QUEUE_TIMEOUT="2",
    )
    yield setup, proc
    proc.stop()


def client(setup: SdkSetup) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{setup.url}/sdk", api_key="unused", max_retries=0, timeout=120)


def read_prompt(setup: SdkSetup) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"read it [[fake:call=Read?file_path={setup.notes}]]"}]


def logged(setup: SdkSetup, session: str) -> list[dict[str, Any]]:
    """The access-log rows of an SDK session: its /sdk request and its Claude Code's /api calls."""
    with urllib.request.urlopen(f"{setup.url}/logs/query?limit=200", timeout=10) as resp:  # noqa: S310
        rows = json.loads(resp.read())["data"]
    return [r for r in rows if r.get("sdk_session_id") == session]


def test_formatted_mode_shows_tool_use_as_compact_text(formatted: SdkSetup) -> None:
    raw = client(formatted).messages.with_raw_response.create(
        model=MODEL, max_tokens=200, messages=read_prompt(formatted)
    )
    message = raw.parse()
    assert {b.type for b in message.content} == {"text"}
    text = "".join(b.text for b in message.content)  # type: ignore[union-attr]
    assert "<tool_use_sdk>" in text and "<tool_result_sdk>" in text
    used = json.loads(text.split("<tool_use_sdk>\n", 1)[1].split("\n</tool_use_sdk>", 1)[0])
    assert used["name"] == "Read" and used["input"] == {"file_path": str(formatted.notes)}
    assert '{"id":' in text  # CLAUDE__PRETTY_FORMAT=false: compact JSON
    assert formatted.notes_text in text
    assert text.count("I'll call Read.") == 1
    # The access log has the run: its /sdk row (Claude Code's own cost, turns, tool uses) and the
    # /api rows of its upstream calls (tokens and cost, each once), all under its session.
    session = raw.headers["x-claude-session-id"]
    rows = wait_until(lambda: len(found := logged(formatted, session)) >= 3 and found, timeout=20,
                      message="the run's access-log rows")
    row = next(r for r in rows if r["mode"] == "sdk")
    assert row["status"] == 200 and row["endpoint"] == "/sdk/v1/messages"
    assert row["input_tokens"] == 0 and row["output_tokens"] == 0 and row["cost_usd"] == 0
    assert row["sdk_cost_usd"] > 0 and row["sdk_turns"] >= 1 and row["sdk_tool_uses"] == 1
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["duration_ms"]
    calls = [r for r in rows if r["mode"] == "api" and r["endpoint"] == "/api/v1/messages"]
    assert len(calls) >= 2  # the Read tool use, then the answer
    assert all(c["status"] == 200 and c["input_tokens"] > 0 and c["cost_usd"] > 0 for c in calls)


def test_ignore_mode_hides_tool_use(ignoring: tuple[SdkSetup, Proc]) -> None:
    setup, _ = ignoring
    events = list(client(setup).messages.create(model=MODEL, max_tokens=200, stream=True,
                                               messages=read_prompt(setup)))
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts and set(starts) == {"text"}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert "tool_use_sdk" not in text and "tool_result_sdk" not in text
    assert setup.notes_text in text  # the tool still ran: Claude's answer quotes the file


def test_queue_timeout_is_a_clear_503_and_the_job_never_runs(
    ignoring: tuple[SdkSetup, Proc], fake_upstream: FakeUpstream
) -> None:
    setup, _ = ignoring
    c = client(setup)
    # Occupy the only run slot with a run that stalls upstream.
    busy = c.messages.create(model=MODEL, max_tokens=10, stream=True,
                             messages=[{"role": "user", "content": "hold [[fake:stall]]"}])
    with busy:
        assert next(iter(busy)).type == "message_start"
        word = uuid.uuid4().hex[:8]
        started = time.monotonic()
        with pytest.raises(anthropic.APIStatusError) as caught:
            c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": f"late {word}"}])
        waited = time.monotonic() - started
    assert caught.value.status_code == 503
    assert "CLAUDE__QUEUE_TIMEOUT" in caught.value.message and caught.value.response.headers.get("retry-after")
    assert 1.5 < waited < 15
    # The slot frees once the stalled run is cancelled; the given-up job must not run then.
    wait_until(lambda: not cli_processes(setup.key_prefix), timeout=15, message="the stalled CLI to stop")
    message = c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "after"}])
    assert "after" in "".join(b.text for b in message.content)  # type: ignore[union-attr]
    assert not [r for r in fake_upstream.requests(path="/v1/messages") if f"late {word}" in json.dumps(r.get("body"))]
