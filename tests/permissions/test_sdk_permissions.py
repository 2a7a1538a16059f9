"""Tool permissions for real: the Claude Code CLI (SDK mode) asks before it writes a file.

The fake upstream scripts a ``Write`` tool use; Claude Code asks its permission callback, which
waits for a decision made over the public API (``/permissions``), as an approver would. Then:
approve -> the file exists and the answer carries the tool's result; deny -> no file and Claude
is told why; nobody answers -> denied after the timeout, and the client's stream says so in text.
Each runs in ``ccproxy serve`` (worker and permissions in process); one runs through the stack
(Traefik, gateway, arq, sdk-worker, permissions service on real Redis).
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.sdk.conftest import CLI, SdkSetup, config_dir, launch_sdk_serve, sdk_env, workspace
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import launch_stack

pytestmark = [pytest.mark.claude_cli, pytest.mark.timeout(180)]

MODEL = "claude-sonnet-4-5"
TIMEOUT = 4  # PERMISSIONS__TIMEOUT_SECONDS of these servers
ADMIN = "cc-perm-admin-" + "k" * 24


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[SdkSetup]:
    if not CLI.exists():
        pytest.fail(f"the Claude Code CLI is not installed at {CLI}: run `npm ci` (the repo's package.json)")
    setup, proc = launch_sdk_serve(tmp_path_factory.mktemp("perm-serve"), fake_upstream,
                                   PERMISSIONS__TIMEOUT_SECONDS=str(TIMEOUT))
    try:
        yield setup
    finally:
        proc.stop()


def call(url: str, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 (a test server)
        url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json", **({"x-api-key": key} if key else {})},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


def pending(url: str, key: str | None = None) -> list[dict[str, Any]]:
    return list(call(url, "GET", "/permissions", key=key)["data"])


def write_prompt(path: Path, content: str) -> str:
    query = urllib.parse.urlencode({"file_path": str(path), "content": content})
    return f"please write the file [[fake:call=Write?{query}]]"


def texts(message: Any) -> str:
    return "".join(getattr(b, "text", "") for b in message.content if getattr(b, "type", None) == "text")


class Run:
    """A client request in a thread, so the test can approve while it waits."""

    def __init__(self, setup: SdkSetup, prompt: str, key: str = "unused", stream: bool = False) -> None:
        client = anthropic.Anthropic(base_url=f"{setup.url}/sdk", api_key=key, max_retries=0, timeout=120)
        self.pool = ThreadPoolExecutor(1)

        def go() -> Any:
            messages = [{"role": "user", "content": prompt}]
            if stream:
                return list(client.messages.create(model=MODEL, max_tokens=200, stream=True, messages=messages))
            return client.messages.create(model=MODEL, max_tokens=200, messages=messages)

        self.future: Future[Any] = self.pool.submit(go)

    def result(self) -> Any:
        try:
            return self.future.result(90)
        finally:
            self.pool.shutdown()


def the_request(url: str, marker: str, key: str | None = None) -> dict[str, Any]:
    """Wait for the one pending request whose input mentions ``marker``."""
    def find() -> dict[str, Any] | None:
        return next((r for r in pending(url, key) if marker in json.dumps(r["input"])), None)
    return wait_until(find, timeout=60, interval=0.05, message=f"a permission request about {marker}")


def test_approve_writes_the_file_and_the_answer_says_so(serve: SdkSetup) -> None:
    target = serve.workspace / f"approved-{uuid.uuid4().hex[:6]}.txt"
    run = Run(serve, write_prompt(target, "hello from claude"))
    request = the_request(serve.url, target.name)
    assert request["tool_name"] == "Write"
    assert request["input"] == {"file_path": str(target), "content": "hello from claude"}
    assert not target.exists()  # nothing happens before the decision
    call(serve.url, "POST", f"/permissions/{request['id']}/respond", {"behavior": "allow"})
    message = run.result()
    assert target.read_text() == "hello from claude"
    # The fake echoes the tool's result into Claude's answer: Claude Code reported the write.
    answer = texts(message)
    assert f"File created successfully at: {target}" in answer, answer
    assert call(serve.url, "GET", f"/permissions/{request['id']}")["status"] == "allowed"


def test_an_edited_input_is_what_runs(serve: SdkSetup) -> None:
    target = serve.workspace / f"edited-{uuid.uuid4().hex[:6]}.txt"
    run = Run(serve, write_prompt(target, "first draft"))
    request = the_request(serve.url, target.name)
    edited = {"file_path": str(target), "content": "approved text"}
    call(serve.url, "POST", f"/permissions/{request['id']}/respond", {"behavior": "allow", "updated_input": edited})
    run.result()
    assert target.read_text() == "approved text"


def test_deny_leaves_no_file_and_claude_is_told(serve: SdkSetup) -> None:
    target = serve.workspace / f"denied-{uuid.uuid4().hex[:6]}.txt"
    run = Run(serve, write_prompt(target, "nope"))
    request = the_request(serve.url, target.name)
    call(serve.url, "POST", f"/permissions/{request['id']}/respond", {"behavior": "deny", "message": "not today"})
    message = run.result()
    assert not target.exists()
    # What Claude was told came back in the tool result the fake echoes.
    assert "denied permission to use Write: not today" in texts(message), texts(message)


def test_nobody_answers_denied_after_the_timeout_and_the_stream_says_so(serve: SdkSetup) -> None:
    target = serve.workspace / f"timeout-{uuid.uuid4().hex[:6]}.txt"
    run = Run(serve, write_prompt(target, "too late"), stream=True)
    request = the_request(serve.url, target.name)
    events = run.result()
    assert not target.exists()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"  # a whole stream, not a broken one
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    notice = f"Permission to use Write was denied: nobody answered the request within {TIMEOUT} seconds."
    assert f"[ccproxy] {notice}" in text, text
    assert call(serve.url, "GET", f"/permissions/{request['id']}")["status"] == "expired"


def read_until(stream: Any, marker: str) -> str:
    """Read SSE lines until ``marker``; return that event's data line (Traefik must not buffer)."""
    while True:
        line = stream.readline().decode()
        assert line, "the stream ended"
        if line.strip() == marker:
            return str(stream.readline().decode())


def test_approve_through_the_stack(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> None:
    """Client and approver both through Traefik; the worker waits on the permissions service."""
    root = tmp_path_factory.mktemp("perm-stack")
    ws, _, _ = workspace(root)
    stack = launch_stack(root / "run", fake_url=fake_upstream.url, claude_config_dir=config_dir(root, fake_upstream),
                         env=sdk_env(ws, SECURITY__AUTH_TOKEN=ADMIN), timeout=30)
    try:
        setup = SdkSetup(stack.url, ws, ws / "notes.txt", "", {}, stack.key_prefix, stack)
        target = ws / "through-the-stack.txt"
        run = Run(setup, write_prompt(target, "via traefik"), key=ADMIN)
        request = the_request(stack.url, target.name, key=ADMIN)
        assert request["key_id"] == "default"  # the shared token's principal travelled with the job
        # The stream through Traefik: the pending request is replayed, then its resolution streams.
        stream = urllib.request.urlopen(urllib.request.Request(  # noqa: S310
            f"{stack.url}/permissions/stream", headers={"x-api-key": ADMIN}), timeout=30)
        assert f'"id":"{request["id"]}"' in read_until(stream, "event: permission_request")
        call(stack.url, "POST", f"/permissions/{request['id']}/respond", {"behavior": "allow"}, key=ADMIN)
        assert '"status":"allowed"' in read_until(stream, "event: permission_resolved")
        stream.close()
        run.result()
        assert target.read_text() == "via traefik"
        page = urllib.request.urlopen(f"{stack.url}/permissions/ui", timeout=10).read().decode()  # noqa: S310
        assert "Tool permissions" in page
    finally:
        stack.stop()


def test_a_client_that_goes_away_withdraws_its_request(serve: SdkSetup) -> None:
    target = serve.workspace / f"gone-{uuid.uuid4().hex[:6]}.txt"
    body = {"model": MODEL, "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": write_prompt(target, "never")}]}
    connection = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(serve.url).port, timeout=60)
    try:
        connection.request("POST", "/sdk/v1/messages", json.dumps(body), {"content-type": "application/json"})
        assert connection.getresponse().status == 200
        request = the_request(serve.url, target.name)
    finally:
        connection.close()
    # The client hung up: the run is cancelled and its request withdrawn, not left to time out.
    view = wait_until(
        lambda: (v := call(serve.url, "GET", f"/permissions/{request['id']}"))["status"] != "pending" and v,
        timeout=TIMEOUT - 1, message="the request to be withdrawn",
    )
    assert view["status"] == "cancelled", view
    assert pending(serve.url) == []
    assert not target.exists()
