"""Client-key limits and budgets in SDK mode: ``ccproxy serve`` on the real Redis, its worker in
process, the real CLI, keys made with ``ccproxy keys create``, the official SDKs as clients.

A refused request must never reach the queue; a run is settled with its real usage when it ends,
fails, or its client leaves, so ``keys list`` shows the spend and no reservation is left held.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
import redis

from ccproxy_auth.keys import MICRO, estimate
from ccproxy_core.pricing import cost_usd
from tests.accounts.helpers import Team
from tests.accounts.test_keys import create_key, keys_list
from tests.sdk.conftest import SdkSetup, cli_processes, launch_sdk_serve
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import SHARED_REDIS, delete_prefix

pytestmark = [pytest.mark.claude_cli, pytest.mark.timeout(240)]

MODEL = "claude-sonnet-4-5"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[tuple[SdkSetup, Team]]:
    """One run at a time (so queued jobs run in order), client keys on the shared Redis."""
    root = tmp_path_factory.mktemp("sdk-keys")
    setup, proc = launch_sdk_serve(root, fake_upstream, REDIS__URL=SHARED_REDIS, CLAUDE__MAX_CONCURRENT_RUNS="1",
                                   SECURITY__KEY_CACHE_SECONDS="1")
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


def access_event(setup: SdkSetup, key_id: str) -> dict[str, Any] | None:
    for _, fields in redis.Redis.from_url(SHARED_REDIS).xrange(setup.key_prefix + "access-log"):
        doc = json.loads(fields[b"e"])
        if doc.get("key_id") == key_id and doc.get("mode") == "sdk":
            return doc  # type: ignore[no-any-return]
    return None


def test_rate_limit_refuses_the_third_run_in_the_clients_format_and_queues_nothing(
    keyed: tuple[SdkSetup, Team], fake_upstream: FakeUpstream
) -> None:
    setup, team = keyed
    key = create_key(team, "--name", "rpm-two", "--rpm", "2")["key"]
    barrier = create_key(team, "--name", "barrier")["key"]
    sdk = anthropic_client(setup, key)
    for _ in range(2):
        sdk.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    refused_words = [uuid.uuid4().hex[:10] for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as oai:
        openai_client(setup, key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"third {refused_words[0]}"}]
        )
    assert oai.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "'rpm-two'" in oai.value.body["message"] and "2 requests per minute" in oai.value.body["message"]  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as ant:
        sdk.messages.create(model=MODEL, max_tokens=20, stream=True,
                            messages=[{"role": "user", "content": f"fourth {refused_words[1]}"}])
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
    row = wait_until(lambda: (r := keys_list(team)["rpm-two"])["requests"] == 2 and r, timeout=10,
                     message="two settlements")
    assert row["spent_usd"] > 0  # no budget, but the spend is counted all the same
    assert row["input_tokens"] > 0


def test_a_budget_for_one_run_refuses_the_next_and_keys_list_shows_the_spend(
    keyed: tuple[SdkSetup, Team],
) -> None:
    setup, team = keyed
    body = {"max_tokens": 50, "messages": [{"role": "user", "content": "spend"}], "model": MODEL}
    _, per_request = estimate(MODEL, len(orjson.dumps(body)), 50)
    budget = 2 * per_request / MICRO  # the first run is admitted; what it really costs is more
    created = create_key(team, "--name", "one-run", "--budget-usd", repr(budget), "--period", "day")
    sdk = anthropic_client(setup, created["key"])
    assert keys_list(team)["one-run"]["period_spent_usd"] == 0
    answer = sdk.messages.create(**body)  # type: ignore[call-overload]
    assert answer.usage.input_tokens > 0
    row = wait_until(lambda: (r := keys_list(team)["one-run"])["requests"] == 1 and r, timeout=10,
                     message="the run settled")
    # Settled from the run's tokens at list price (what the access log's cost_usd says too).
    usage = answer.usage
    one_hour = usage.cache_creation.ephemeral_1h_input_tokens if usage.cache_creation else 0
    expected = cost_usd(MODEL, usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens or 0,
                        usage.cache_creation_input_tokens or 0, one_hour)
    assert row["input_tokens"] == usage.input_tokens and row["output_tokens"] == usage.output_tokens
    assert row["period_spent_usd"] == pytest.approx(expected, abs=2e-6) and row["spent_usd"] > 0
    assert row["period_spent_usd"] + per_request / MICRO > budget, "a run of Claude Code costs more than its estimate"
    assert held_micro_usd(setup, created["id"]) == 0
    # The access log's cost_usd is the same figure; Claude Code's own one is kept as sdk_cost_usd.
    doc = wait_until(lambda: access_event(setup, created["id"]), timeout=10, message="the access-log event")
    assert doc["cost_usd"] == pytest.approx(row["spent_usd"], abs=2e-6) and doc["sdk_cost_usd"] > 0
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk.messages.create(**body)  # type: ignore[call-overload]
    assert caught.value.status_code == 402
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "billing_error"
    assert "'one-run'" in error["message"] and f"budget of ${budget:.2f} per day" in error["message"]
    with pytest.raises(openai.APIStatusError) as oai:
        openai_client(setup, created["key"]).chat.completions.create(model=MODEL, messages=body["messages"])  # type: ignore[arg-type]
    assert oai.value.status_code == 402 and oai.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert keys_list(team)["one-run"]["requests"] == 1


def test_a_run_its_client_left_or_that_failed_is_settled_and_releases_its_reservation(
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
        assert held_micro_usd(setup, created["id"]) > 0  # reserved while it runs
    # Gone: the worker stops Claude Code and reports what the cut-off call had used (its input).
    row: dict[str, Any] = wait_until(lambda: (r := keys_list(team)["leaver"])["requests"] == 1 and r, timeout=30,
                                     message="the abandoned run settled")
    assert row["input_tokens"] > 0 and row["spent_usd"] > 0
    assert held_micro_usd(setup, created["id"]) == 0
    wait_until(lambda: not cli_processes(setup.key_prefix), timeout=15, message="the CLI to stop")
    # A run that fails (the upstream refuses Claude Code's call): an error, and nothing held.
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "no [[fake:error=400]]"}])
    wait_until(lambda: keys_list(team)["leaver"]["requests"] == 2, timeout=10, message="the failed run settled")
    assert held_micro_usd(setup, created["id"]) == 0


def cli_command_line(key_prefix: str) -> list[str]:
    """The argv of a Claude Code process running for a worker under ``key_prefix`` ([] if none)."""
    for pid in cli_processes(key_prefix):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        return [a.decode() for a in argv]
    return []


def test_runs_in_flight_each_reserve_a_run_and_claude_code_may_not_spend_more(
    keyed: tuple[SdkSetup, Team],
) -> None:
    setup, team = keyed
    # The default CLAUDE__RUN_RESERVATION_USD is $1: this budget holds exactly two runs at once,
    # though each request's own estimate is a tiny fraction of a dollar.
    created = create_key(team, "--name", "two-runs", "--budget-usd", "2", "--period", "day")
    sdk = anthropic_client(setup, created["key"])

    def ask(_: int) -> Any:
        try:  # slow events: the admitted runs are still in flight when the last one asks
            return sdk.messages.create(model=MODEL, max_tokens=50,
                                       messages=[{"role": "user", "content": "run [[fake:slow=0.3]]"}])
        except anthropic.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(ask, i) for i in range(3)]
        # One worker, one run at a time: the first runs while the second waits, both reserved.
        argv = wait_until(lambda: cli_command_line(setup.key_prefix), timeout=30, message="a run's Claude Code")
        assert held_micro_usd(setup, created["id"]) == 2 * MICRO
        outcomes = [f.result(timeout=120) for f in futures]
    assert argv[argv.index("--max-budget-usd") + 1] == "1.0"  # the run may not spend more than it holds
    refused = [o for o in outcomes if isinstance(o, anthropic.APIStatusError)]
    assert len(refused) == 1 and len(outcomes) - len(refused) == 2
    assert refused[0].status_code == 402
    error = refused[0].body["error"]  # type: ignore[index]
    assert error["type"] == "billing_error" and "'two-runs'" in error["message"]
    assert "budget of $2.00 per day" in error["message"]
    row = wait_until(lambda: (r := keys_list(team)["two-runs"])["requests"] == 2 and r, timeout=10,
                     message="both runs settled")
    assert 0 < row["period_spent_usd"] < 1  # settled with the real usage, not the reservation
    assert held_micro_usd(setup, created["id"]) == 0
