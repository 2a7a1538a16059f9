"""Client keys in SDK mode: ``ccproxy serve`` on the real Redis, its worker in process, the real
CLI, keys made with ``ccproxy keys create``, the official SDKs as clients.

Claude Code holds no upstream credential: it calls the gateway's ``/api`` with a token of its run
only, so each of its upstream calls is admitted, billed and logged as the member's own API request
(the spend recorded once), and the token dies with the run. The ``/sdk`` request is admitted like
one API request: a refused one never reaches the queue, and it holds nothing.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
import redis

from ccproxy_auth.keys import MICRO, estimate
from tests.accounts.helpers import Team
from tests.accounts.test_keys import create_key, keys_list
from tests.sdk.conftest import SdkSetup, cli_processes, launch_sdk_serve
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import SHARED_REDIS, delete_prefix

pytestmark = [pytest.mark.claude_cli, pytest.mark.timeout(240)]

MODEL = "claude-sonnet-4-5"
#: What the agent tries with its run token, from inside the run (a Bash tool use runs it).
PROBE = """
import os, urllib.error, urllib.request
base, token = os.environ["ANTHROPIC_BASE_URL"].removesuffix("/api"), os.environ["ANTHROPIC_API_KEY"]
for path in ("/api/v1/models", "/sdk/v1/models", "/logs/usage", "/permissions"):
    request = urllib.request.Request(base + path, headers={"x-api-key": token})
    try:
        status = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as exc:
        status = exc.code
    print("probe", path, status)
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[tuple[SdkSetup, Team]]:
    """One run at a time (so queued jobs run in order), client keys on the shared Redis; the
    operator allows Bash (no permission prompt)."""
    root = tmp_path_factory.mktemp("sdk-keys")
    setup, proc = launch_sdk_serve(root, fake_upstream, REDIS__URL=SHARED_REDIS, CLAUDE__MAX_CONCURRENT_RUNS="1",
                                   SECURITY__KEY_CACHE_SECONDS="1", CLAUDE__OPTIONS__ALLOWED_TOOLS='["Bash"]')
    try:
        team = Team(root / "run", fake_upstream, setup.env)
        # Once a key exists every request needs one; the gateway sees that within its cache time.
        create_key(team, "--name", "first")
        wait_until(lambda: httpx.get(f"{setup.url}/sdk/v1/models").status_code == 401, timeout=10,
                   message="client keys to be required")
        yield setup, team
    finally:
        proc.stop()
        delete_prefix(SHARED_REDIS, setup.key_prefix)


def anthropic_client(setup: SdkSetup, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{setup.url}/sdk", api_key=key, max_retries=0, timeout=120)


def openai_client(setup: SdkSetup, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{setup.url}/sdk/v1", api_key=key, max_retries=0, timeout=120)


def reached_upstream(fake: FakeUpstream, word: str) -> bool:
    return any(word in json.dumps(r.get("body")) for r in fake.requests(path="/v1/messages"))


def held_micro_usd(setup: SdkSetup, key_id: str) -> int:
    """What the key's requests in flight hold of its budget (auth's reservation counter)."""
    raw = redis.Redis.from_url(SHARED_REDIS).get(f"{setup.key_prefix}keys:id:{key_id}:reserved")
    return int(raw or 0)


def access_events(setup: SdkSetup, key_id: str) -> list[dict[str, Any]]:
    found = []
    for _, fields in redis.Redis.from_url(SHARED_REDIS).xrange(setup.key_prefix + "access-log"):
        doc = json.loads(fields[b"e"])
        if doc.get("key_id") == key_id:
            found.append(doc)
    return found


def run_tokens_left(setup: SdkSetup) -> list[bytes]:
    return list(redis.Redis.from_url(SHARED_REDIS).scan_iter(match=f"{setup.key_prefix}sdk:run-token:*"))


def test_rate_limit_refuses_a_run_in_the_clients_format_and_queues_nothing(
    keyed: tuple[SdkSetup, Team], fake_upstream: FakeUpstream
) -> None:
    setup, team = keyed
    key = create_key(team, "--name", "rpm-two", "--rpm", "2")["key"]
    barrier = create_key(team, "--name", "barrier")["key"]
    api = anthropic.Anthropic(base_url=f"{setup.url}/api", api_key=key, max_retries=0, timeout=60)
    for _ in range(2):  # the minute's two requests, in API mode
        api.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    refused_words = [uuid.uuid4().hex[:10] for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as oai:
        openai_client(setup, key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"third {refused_words[0]}"}]
        )
    assert oai.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "'rpm-two'" in oai.value.body["message"] and "2 requests per minute" in oai.value.body["message"]  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as ant:
        fourth = [{"role": "user", "content": f"fourth {refused_words[1]}"}]
        anthropic_client(setup, key).messages.create(model=MODEL, max_tokens=20, stream=True, messages=fourth)
    assert ant.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(ant.value.response.headers["retry-after"]) >= 1
    # One worker, one run at a time, jobs in order: had a refused request been queued, it would
    # have run before this one ends.
    barrier_word = uuid.uuid4().hex[:10]
    anthropic_client(setup, barrier).messages.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": f"barrier {barrier_word}"}]
    )
    assert reached_upstream(fake_upstream, barrier_word)
    assert not [w for w in refused_words if reached_upstream(fake_upstream, w)]


def test_a_runs_calls_are_its_members_billed_once_and_its_token_holds_nothing_more(
    keyed: tuple[SdkSetup, Team], fake_upstream: FakeUpstream
) -> None:
    """Think like the agent: a Bash tool use looks for a credential and tries its run token
    everywhere. It finds none but the token, which works on /api alone, and only for the run."""
    setup, team = keyed
    created = create_key(team, "--name", "runner", "--budget-usd", "5", "--period", "day")
    (setup.workspace / "probe.py").write_text(PROBE)
    marker = uuid.uuid4().hex[:10]
    command = (f'echo {marker}; echo "config=$CLAUDE_CONFIG_DIR"; ls -A "$CLAUDE_CONFIG_DIR"; '
               'echo "token=$ANTHROPIC_API_KEY"; env; python3 probe.py')
    prompt = f"look around [[fake:call=Bash?{urllib.parse.urlencode({'command': command})}]]"
    raw = anthropic_client(setup, created["key"]).messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": prompt}])
    answer = "".join(b.text for b in raw.parse().content if b.type == "text")
    session = raw.headers["x-claude-session-id"]
    assert marker in answer, answer[-3000:]
    # No upstream credential: not in its config directory (which holds no .credentials.json), not
    # in its environment; the only key it has is its run's token, for the gateway's /api.
    listing = answer.split("config=", 1)[1].split("token=", 1)[0]
    assert ".credentials.json" not in listing, listing
    login = setup.workspace.parent / "claude" / ".credentials.json"  # the serve's upstream login (conftest)
    upstream = json.loads(login.read_text())["claudeAiOauth"]
    assert upstream["accessToken"] not in answer and upstream["refreshToken"] not in answer
    assert f"ANTHROPIC_BASE_URL={setup.url}/api" in answer
    token = re.search(r"token=(ccp_run_[\w-]+)", answer)
    assert token, answer[-3000:]
    for path, status in (("/api/v1/models", 200), ("/sdk/v1/models", 401), ("/logs/usage", 401),
                         ("/permissions", 401)):
        assert f"probe {path} {status}" in answer, (path, answer[-3000:])
    # Its upstream calls are the member's /api requests, marked with the run's session; their
    # cost is the spend, recorded once: the /sdk row has the run's summary, no tokens, no cost.
    def rows() -> list[dict[str, Any]] | None:
        events = [e for e in access_events(setup, created["id"]) if e.get("sdk_session_id") == session]
        return events if [e for e in events if e["mode"] == "sdk"] else None

    events = wait_until(rows, timeout=15, message="the run's access-log events")
    run = next(e for e in events if e["mode"] == "sdk")
    assert run["cost_usd"] == 0 and run["input_tokens"] == 0 and run["sdk_cost_usd"] > 0 and run["sdk_tool_uses"] == 1
    calls = [e for e in events if e["mode"] == "api" and e["endpoint"] == "/api/v1/messages"]
    assert len(calls) >= 2 and all(c["key_id"] == created["id"] and c["cost_usd"] > 0 for c in calls)
    spent = sum(e["cost_usd"] for e in events)
    row = wait_until(lambda: (r := keys_list(team)["runner"])["spent_usd"] >= spent - 2e-6 and r, timeout=10,
                     message="the calls settled")
    assert row["spent_usd"] == pytest.approx(spent, abs=2e-6) and row["period_spent_usd"] == row["spent_usd"]
    assert held_micro_usd(setup, created["id"]) == 0
    # The run is over: its token is gone from Redis and refused.
    assert not run_tokens_left(setup)
    after = httpx.post(f"{setup.url}/api/v1/messages", headers={"x-api-key": token.group(1)}, timeout=30,
                       json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert after.status_code == 401, after.text


def test_a_budget_a_run_would_exceed_gives_the_member_the_error(
    keyed: tuple[SdkSetup, Team], fake_upstream: FakeUpstream
) -> None:
    setup, team = keyed
    word = uuid.uuid4().hex[:10]
    body = {"max_tokens": 50, "messages": [{"role": "user", "content": f"spend {word}"}], "model": MODEL}
    _, per_request = estimate(MODEL, len(orjson.dumps(body)), 50)
    # Room for the /sdk request's own estimate, none for a call of Claude Code (its prompt and
    # max_tokens are far larger): the run's first call is refused, and the member gets the 402.
    budget = 3 * per_request / MICRO
    created = create_key(team, "--name", "small-budget", "--budget-usd", repr(budget), "--period", "day")
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(setup, created["key"]).messages.create(**body)  # type: ignore[call-overload]
    assert caught.value.status_code == 402, caught.value.body
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "billing_error" and "'small-budget'" in error["message"], error
    assert not reached_upstream(fake_upstream, word)
    row = keys_list(team)["small-budget"]
    assert row["spent_usd"] == 0 and held_micro_usd(setup, created["id"]) == 0
    assert not run_tokens_left(setup)


def test_a_run_its_client_left_or_that_failed_holds_nothing_after(
    keyed: tuple[SdkSetup, Team], fake_upstream: FakeUpstream
) -> None:
    setup, team = keyed
    created = create_key(team, "--name", "leaver", "--budget-usd", "5")
    sdk = anthropic_client(setup, created["key"])
    word = uuid.uuid4().hex[:10]
    stream = sdk.messages.create(model=MODEL, max_tokens=50, stream=True,
                                 messages=[{"role": "user", "content": f"stall {word} [[fake:stall]]"}])
    with stream:
        assert next(iter(stream)).type == "message_start"
        assert held_micro_usd(setup, created["id"]) > 0  # Claude Code's call in flight holds its estimate
        assert run_tokens_left(setup)
    # Gone: the worker stops Claude Code; its call is settled with what it used (its input).
    row: dict[str, Any] = wait_until(lambda: (r := keys_list(team)["leaver"])["spent_usd"] > 0 and r, timeout=30,
                                     message="the abandoned call settled")
    assert row["input_tokens"] > 0
    wait_until(lambda: held_micro_usd(setup, created["id"]) == 0 and not run_tokens_left(setup), timeout=15,
               message="nothing held and no run token left")
    wait_until(lambda: not cli_processes(setup.key_prefix), timeout=15, message="the CLI to stop")
    # A run that fails (the upstream refuses Claude Code's call): an error, and nothing held.
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "no [[fake:error=400]]"}])
    assert held_micro_usd(setup, created["id"]) == 0 and not run_tokens_left(setup)
