"""Issue 13, SDK mode: a member's sessions, the operator's tool policy and the sdk-worker's
faults, against real processes (``ccproxy serve`` and the stack, real Redis, the real Claude Code
CLI from node_modules, the fake upstream).

- Sessions belong to the key that made them: Carol naming Alice's session gets one of her own
  (and never Alice's turns upstream); Alice's session id in Carol's hands is a 404. A named
  session's request is logged with its key (and its permission prompts are the member's), and
  its metrics label is the route template.
- ``claude_options`` only narrow the operator's ``CLAUDE__OPTIONS__*``.
- Under ``serve`` with ``REDIS__URL``, SDK mode comes back after Redis restarts.
- A worker whose event loop stalls keeps its run; one killed for real fails it cleanly in time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest
import redis

from ccproxy_core.errors import ProxyError
from ccproxy_core.sdk_jobs import HEARTBEAT_TTL, LIVENESS_AFTER
from ccproxy_core.sdk_options import apply_overrides, check_overrides
from ccproxy_core.settings import Settings
from tests.accounts.helpers import Team
from tests.accounts.test_keys import create_key
from tests.sdk.conftest import CLI, SdkSetup, launch_sdk_serve, launch_sdk_stack
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.redis_server import OwnRedis
from tests.support.stack import SHARED_REDIS, StackProc, delete_prefix

pytestmark = [pytest.mark.claude_cli, pytest.mark.timeout(300)]

MODEL = "claude-sonnet-4-6"
LEAD = "cc-lead-token-" + "l" * 24
#: The operator's policy of the team server: no writing tools at all.
OPERATOR_DISALLOWED = ["Write", "Edit", "Bash"]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
         ) -> Iterator[tuple[SdkSetup, dict[str, dict[str, Any]]]]:
    """``ccproxy serve`` on the shared Redis with a lead token, the members Alice and Carol, and
    an operator who disallowed Write, Edit and Bash."""
    if not CLI.exists():
        pytest.fail(f"the Claude Code CLI is not installed at {CLI}: run `npm ci` (the repo's package.json)")
    root = tmp_path_factory.mktemp("sdk-safety")
    setup, proc = launch_sdk_serve(
        root, fake_upstream, REDIS__URL=SHARED_REDIS, SECURITY__AUTH_TOKEN=LEAD, SECURITY__KEY_CACHE_SECONDS="1",
        CLAUDE__OPTIONS__DISALLOWED_TOOLS=json.dumps(OPERATOR_DISALLOWED), PERMISSIONS__TIMEOUT_SECONDS="30",
    )
    try:
        members = Team(root / "run", fake_upstream, setup.env)
        keys = {name: create_key(members, "--name", name) for name in ("alice", "carol")}
        for created in keys.values():  # usable once the gateway's key cache saw it
            wait_until(lambda k=created["key"]: httpx.get(f"{setup.url}/sdk/v1/models",  # type: ignore[misc]
                                                          headers={"x-api-key": k}).status_code == 200,
                       timeout=15, message="the new key to be accepted")
        yield setup, keys
    finally:
        proc.stop()
        delete_prefix(SHARED_REDIS, setup.key_prefix)


def client(url: str, key: str, path: str = "/sdk") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url + path, api_key=key, max_retries=0, timeout=120)


def upstream_bodies(fake: FakeUpstream, word: str) -> list[str]:
    """The bodies of the upstream calls that carry ``word`` (as JSON text)."""
    bodies = (json.dumps(r.get("body")) for r in fake.requests(path="/v1/messages"))
    return [b for b in bodies if word in b]


def access_events(setup: SdkSetup) -> list[dict[str, Any]]:
    client_ = redis.Redis.from_url(SHARED_REDIS)
    try:
        return [json.loads(fields[b"e"]) for _, fields in client_.xrange(setup.key_prefix + "access-log")]
    finally:
        client_.close()


def texts(message: Any) -> str:
    return "".join(getattr(b, "text", "") for b in message.content if getattr(b, "type", None) == "text")


# -- 2. sessions are their owners' ---------------------------------------------------------------


def test_a_named_session_is_its_owners_alone(
    team: tuple[SdkSetup, dict[str, dict[str, Any]]], fake_upstream: FakeUpstream
) -> None:
    setup, keys = team
    alice, carol = keys["alice"], keys["carol"]
    secret = f"hunter-{uuid.uuid4().hex[:10]}"
    first = client(setup.url, alice["key"], "/sdk/demo").messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"my password is {secret}"}]
    )
    alice_session = first.headers["x-claude-session-id"]
    assert secret in texts(first.parse())
    # Carol names the same session with her own key: she gets a session of her own, and Claude
    # Code never sends Alice's turns upstream for her.
    carol_word = uuid.uuid4().hex[:10]
    carol_answer = client(setup.url, carol["key"], "/sdk/demo").messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"what is my password? {carol_word}"}]
    )
    assert carol_answer.headers["x-claude-session-id"] != alice_session
    carol_bodies = upstream_bodies(fake_upstream, carol_word)
    assert carol_bodies and not [b for b in carol_bodies if secret in b], "Carol's run saw Alice's turns"
    # Alice's session id in Carol's hands (path or header) is nobody's business: 404, nothing runs.
    for path, headers in ((f"/sdk/{alice_session}", {}), ("/sdk", {"x-claude-session-id": alice_session})):
        stolen_word = uuid.uuid4().hex[:10]
        with pytest.raises(anthropic.NotFoundError) as caught:
            client(setup.url, carol["key"], path).messages.create(
                model=MODEL, max_tokens=50, extra_headers=headers,
                messages=[{"role": "user", "content": f"and now? {stolen_word}"}],
            )
        assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        assert not upstream_bodies(fake_upstream, stolen_word)
    # Alice herself continues her session: her history is there.
    again = uuid.uuid4().hex[:10]
    client(setup.url, alice["key"], "/sdk/demo").messages.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"repeat it {again}"}]
    )
    assert [b for b in upstream_bodies(fake_upstream, again) if secret in b]
    # Her named-session requests are logged under her key, with the route's template.
    events = wait_until(
        lambda: len(found := [e for e in access_events(setup) if e.get("key_id") == alice["id"]
                              and e.get("endpoint") == "/sdk/{session_id}/v1/messages"]) >= 2 and found,
        timeout=15, message="Alice's named-session requests in the access log",
    )
    assert len(events) == 2 and {e["sdk_session_id"] for e in events} == {alice_session}
    assert all(e["status"] == 200 and e["mode"] == "sdk" for e in events)


def test_a_named_session_error_is_labelled_with_the_route_template(
    team: tuple[SdkSetup, dict[str, dict[str, Any]]],
) -> None:
    setup, keys = team
    name = f"label-{uuid.uuid4().hex[:10]}"
    with pytest.raises(anthropic.BadRequestError):
        client(setup.url, keys["alice"]["key"], f"/sdk/{name}").messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}],
            extra_body={"claude_options": {"no_such_option": 1}},
        )
    metrics = httpx.get(setup.url + "/metrics", headers={"x-api-key": LEAD}).text
    assert name not in metrics
    assert re.search(r'ccproxy_requests_total\{[^}]*route="/sdk/\{session_id\}/v1/messages"[^}]*status="400"', metrics)
    # The failed request is in the access log under Alice's key too.
    wait_until(lambda: [e for e in access_events(setup) if e.get("key_id") == keys["alice"]["id"]
                        and e.get("status") == 400 and e.get("endpoint") == "/sdk/{session_id}/v1/messages"],
               timeout=15, message="the refused request in the access log")


# -- 4. a request only narrows the operator's policy ---------------------------------------------


def test_options_narrow_the_operators_and_never_widen_them(tmp_path: Path) -> None:
    """The rules, on the functions the gateway and the worker share."""
    settings = Settings(claude={
        "workspace_root": tmp_path,
        "overridable_options": ["permission_mode", "disallowed_tools", "allowed_tools", "max_turns",
                                "append_system_prompt", "add_dirs"],
        "options": {"permission_mode": "default", "disallowed_tools": ["Write"], "allowed_tools": ["Read", "Grep"],
                    "max_turns": 5, "append_system_prompt": "Never touch prod."},
    })
    for widening in ({"permission_mode": "acceptEdits"}, {"permission_mode": "auto"},
                     {"allowed_tools": ["Read", "Bash"]}, {"add_dirs": ["/"]}):
        with pytest.raises(ProxyError) as caught:
            check_overrides(widening, settings)
        assert caught.value.status == 403, widening
    narrowed = apply_overrides(check_overrides({
        "permission_mode": "plan", "disallowed_tools": [], "allowed_tools": ["Read"], "max_turns": 50,
        "append_system_prompt": "Be brief.",
    }, settings), settings)
    assert narrowed.permission_mode == "plan"
    assert narrowed.disallowed_tools == ["Write"]  # an empty list takes nothing away
    assert narrowed.allowed_tools == ["Read"]
    assert narrowed.max_turns == 5  # limits only go down
    assert narrowed.append_system_prompt == "Never touch prod.\n\nBe brief."
    assert apply_overrides(check_overrides({"disallowed_tools": ["WebFetch"], "max_turns": 2}, settings),
                           settings).model_dump(include={"disallowed_tools", "max_turns"}) == {
        "disallowed_tools": ["Write", "WebFetch"], "max_turns": 2}


def write_prompt(path: Path, content: str) -> str:
    query = urllib.parse.urlencode({"file_path": str(path), "content": content})
    return f"please write the file [[fake:call=Write?{query}]]"


def pending_about(url: str, marker: str) -> list[dict[str, Any]]:
    resp = httpx.get(url + "/permissions", headers={"x-api-key": LEAD}, timeout=10)
    return [r for r in resp.json()["data"] if marker in json.dumps(r["input"])]


def test_a_request_cannot_undo_the_operators_tool_policy(
    team: tuple[SdkSetup, dict[str, dict[str, Any]]], fake_upstream: FakeUpstream
) -> None:
    setup, keys = team
    sdk = client(setup.url, keys["alice"]["key"])
    # The attack: clear the operator's disallowed tools and pick a laxer mode.
    target = setup.workspace / f"undo-{uuid.uuid4().hex[:8]}.txt"
    attack = {"disallowed_tools": [], "permission_mode": "acceptEdits"}
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        sdk.messages.create(model=MODEL, max_tokens=50, extra_body={"claude_options": attack},
                            messages=[{"role": "user", "content": write_prompt(target, "pwned")}])
    assert "permission_mode acceptEdits is less strict" in caught.value.message
    assert not target.exists() and not upstream_bodies(fake_upstream, target.name)
    # Clearing the list alone is accepted but takes nothing away: Claude Code never gets Write, so
    # no approval is even asked (an approver here would say yes to anything) and nothing is written.
    target = setup.workspace / f"cleared-{uuid.uuid4().hex[:8]}.txt"
    asked: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(sdk.messages.create, model=MODEL, max_tokens=50, extra_body={
            "claude_options": {"disallowed_tools": []}}, messages=[{"role": "user", "content": write_prompt(
                target, "pwned")}])
        while not run.done():
            for request in pending_about(setup.url, target.name):
                asked.append(request["tool_name"])
                httpx.post(f"{setup.url}/permissions/{request['id']}/respond", headers={"x-api-key": LEAD},
                           json={"behavior": "allow"}, timeout=10)
            wait([run], timeout=0.1)
        run.result()
    assert not target.exists(), "the request re-enabled a tool the operator disallowed"
    assert not asked
    assert upstream_bodies(fake_upstream, target.name)  # the run did happen, without Write


# -- 5. serve's worker comes back after a Redis restart -----------------------------------------


def test_serve_sdk_mode_survives_a_redis_restart(tmp_path: Path, fake_upstream: FakeUpstream, own_redis: OwnRedis
                                                ) -> None:
    own = own_redis
    setup, proc = launch_sdk_serve(tmp_path / "serve", fake_upstream, REDIS__URL=own.url, CLAUDE__QUEUE_TIMEOUT="5",
                                   REDIS__SOCKET_TIMEOUT="2", REDIS__CONNECT_TIMEOUT="2")
    sdk = client(setup.url, "unused")

    def ask(word: str) -> bool:
        try:
            message = sdk.messages.create(model=MODEL, max_tokens=20,
                                          messages=[{"role": "user", "content": f"hello {word}"}])
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 503, exc  # busy or Redis away: a clear 503, nothing else
            return False
        except anthropic.APIConnectionError:
            return False
        return word in texts(message)

    try:
        assert ask(uuid.uuid4().hex[:8])
        own.stop()
        # arq's loop meets the dropped connection and ends. (A restart quicker than its next poll
        # can go unnoticed: the process's one Redis client may already have reconnected.)
        wait_until(lambda: "sdk-worker" in (log := proc.log_text()) and " stopped (" in log, timeout=30,
                   message="the worker's loop to end while Redis is away")
        own.start()  # same port, empty
        started = time.monotonic()
        wait_until(lambda: ask(uuid.uuid4().hex[:8]), timeout=60, interval=0.5,
                   message="an SDK request to succeed after the Redis restart")
        assert time.monotonic() - started < 60
        assert "started again" in proc.log_text()
    finally:
        proc.stop()


# -- 6. liveness: a stall is not a death, a death is noticed -----------------------------------


@pytest.fixture(scope="module")
def worker_stack(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[StackProc]:
    """The stack with its one sdk-worker, which the tests freeze and then kill."""
    stack, _ = launch_sdk_stack(tmp_path_factory.mktemp("sdk-liveness"), fake_upstream)
    try:
        yield stack
    finally:
        for proc in stack.services.values():
            if proc.alive():
                os.kill(proc.process.pid, signal.SIGCONT)
        stack.stop()


class SseReader:
    """A streaming SDK request read raw in a thread: every event, in order, as it arrives."""

    def __init__(self, url: str, prompt: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.done = threading.Event()
        self.status = 0
        self.thread = threading.Thread(target=self._read, args=(url, prompt), daemon=True)
        self.thread.start()

    def _read(self, url: str, prompt: str) -> None:
        body = {"model": MODEL, "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": prompt}]}
        try:
            with httpx.stream("POST", url + "/sdk/v1/messages", json=body, timeout=180,
                              headers={"x-api-key": "unused"}) as resp:
                self.status = resp.status_code
                name = ""
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        self.events.append((name, json.loads(line.removeprefix("data: "))))
        finally:
            self.done.set()

    def text(self) -> str:
        return "".join(d["delta"].get("text", "") for n, d in self.events
                       if n == "content_block_delta" and d["delta"].get("type") == "text_delta")

    def has_output(self) -> bool:
        return bool(self.text())


def health_keys(stack: StackProc) -> list[bytes]:
    client_ = redis.Redis.from_url(stack.redis_url)
    try:
        return list(client_.scan_iter(match=stack.key_prefix + "sdk:health:*"))
    finally:
        client_.close()


def test_a_stalled_worker_keeps_its_run(worker_stack: StackProc) -> None:
    worker = worker_stack.services["sdk-worker"].process
    reader = SseReader(worker_stack.url, f"stall {uuid.uuid4().hex[:8]} [[fake:long=30]] [[fake:slow=0.3]]")
    wait_until(reader.has_output, timeout=60, message="the run's first output")
    os.kill(worker.pid, signal.SIGSTOP)  # the worker's event loop stands still; its CLI runs on
    try:
        # The fault: a stall longer than arq's health key lives (its last report + 6 s) and than the
        # gateway's silence before it checks liveness, well within the run's heartbeat.
        frozen_for = LIVENESS_AFTER + 3
        assert frozen_for < HEARTBEAT_TTL - 3
        wait_until(lambda: not health_keys(worker_stack), timeout=10, message="arq's health key to expire")
        time.sleep(frozen_for)  # the stall itself, not a synchronisation
        assert not reader.done.is_set(), reader.events[-3:]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert reader.done.wait(90), "the run did not finish after the worker went on"
    names = [n for n, _ in reader.events]
    assert reader.status == 200 and "error" not in names, [e for e in reader.events if e[0] == "error"]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert reader.text().split() == [f"word{i}" for i in range(30)]  # the whole answer, once


def test_a_killed_worker_fails_its_run_cleanly_in_bounded_time(worker_stack: StackProc) -> None:
    reader = SseReader(worker_stack.url, f"doomed {uuid.uuid4().hex[:8]} [[fake:long=200]] [[fake:slow=0.5]]")
    wait_until(reader.has_output, timeout=60, message="the run's first output")
    worker_stack.kill("sdk-worker")  # SIGKILL, its CLI with it
    killed = time.monotonic()
    assert reader.done.wait(LIVENESS_AFTER + HEARTBEAT_TTL + 20), "the client was left waiting"
    elapsed = time.monotonic() - killed
    errors = [d for n, d in reader.events if n == "error"]
    assert errors, reader.events[-3:]
    assert errors[0]["error"]["type"] == "api_error" and "stopped" in errors[0]["error"]["message"]
    assert elapsed < LIVENESS_AFTER + HEARTBEAT_TTL + 15


def test_a_named_sessions_permission_prompt_is_its_members(
    team: tuple[SdkSetup, dict[str, dict[str, Any]]],
) -> None:
    """A tool use on ``/sdk/{session}/v1`` asks in the member's name: she sees and decides it,
    another member does not see it."""
    setup, keys = team
    alice, carol = keys["alice"], keys["carol"]
    marker = f"https://example.invalid/{uuid.uuid4().hex[:10]}"
    query = urllib.parse.urlencode({"url": marker, "prompt": "summarise"})
    with ThreadPoolExecutor(1) as pool:
        prompt = f"fetch [[fake:call=WebFetch?{query}]]"
        run = pool.submit(client(setup.url, alice["key"], "/sdk/prompts").messages.create, model=MODEL,
                          max_tokens=50, messages=[{"role": "user", "content": prompt}])

        def mine(key: str) -> list[dict[str, Any]]:
            resp = httpx.get(setup.url + "/permissions", headers={"x-api-key": key}, timeout=10)
            return [r for r in resp.json()["data"] if marker in json.dumps(r["input"])]

        [request] = wait_until(lambda: mine(alice["key"]), timeout=60, message="Alice's permission prompt")
        assert request["tool_name"] == "WebFetch"
        assert not mine(carol["key"])
        resp = httpx.post(f"{setup.url}/permissions/{request['id']}/respond", headers={"x-api-key": alice["key"]},
                          json={"behavior": "deny", "message": "not now"}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert "not now" in texts(run.result(timeout=60))
