"""Per-member client keys end to end: ``ccproxy keys …`` on the real Redis, ``ccproxy serve``
checking them, official SDKs as clients.

A budget that allows five requests must let exactly five of fifty concurrent requests through
(the answers are slow, so every admission happens before any settlement: nothing but the
atomic reservation can hold the line). Revocation must reach a second gateway replica within
its key cache time.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
import redis as redis_sync

from ccproxy_auth.keys import MICRO, estimate
from tests.accounts.helpers import MODEL, REDIS_URL, Team, make_team, nonce
from tests.support.fake import FakeUpstream
from tests.support.process import Proc, wait_until
from tests.support.serve import launch_serve


def team_with_key(tmp_path: Path, fake: FakeUpstream, prefix: str, **env: str) -> Team:
    team = make_team(tmp_path, fake, prefix, REDIS__URL=REDIS_URL, **env)
    team.add_api_key("main")
    return team


def create_key(team: Team, *args: str) -> dict[str, Any]:
    return json.loads(team.ccproxy("keys", "create", "--json", *args).stdout)  # type: ignore[no-any-return]


def keys_list(team: Team) -> dict[str, dict[str, Any]]:
    rows = json.loads(team.ccproxy("keys", "list", "--json", "--all").stdout)
    return {row["name"]: row for row in rows}


def test_fifty_concurrent_requests_against_a_budget_for_five(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = team_with_key(tmp_path, fake_upstream, prefix)
    text = f"{nonce()} [[fake:slow=2]]"
    body = {"max_tokens": 16, "messages": [{"role": "user", "content": text}], "model": MODEL}
    _, per_request = estimate(MODEL, len(orjson.dumps(body)), 16)
    budget = 5.5 * per_request / MICRO
    key = create_key(team, "--name", "carol", "--budget-usd", repr(budget), "--period", "day")["key"]
    with team.serve() as proc:
        async def burst() -> list[Any]:
            sdk = anthropic.AsyncAnthropic(base_url=proc.url + "/api", api_key=key, max_retries=0, timeout=60)

            async def one() -> Any:
                try:
                    return await sdk.messages.create(**body)  # type: ignore[arg-type]
                except anthropic.APIStatusError as exc:
                    return exc

            try:
                return await asyncio.gather(*(one() for _ in range(50)))
            finally:
                await sdk.close()

        results = asyncio.run(burst())
        ok = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, anthropic.APIStatusError)]
        assert len(ok) == 5 and len(refused) == 45
        assert {r.status_code for r in refused} == {402}
        message = refused[0].body["error"]["message"]  # type: ignore[index]
        assert refused[0].body["error"]["type"] == "billing_error"  # type: ignore[index]
        assert "'carol'" in message and "per day" in message
        # Settled from the real usage, visible per key; never above the budget.
        row = wait_until(lambda: (r := keys_list(team)["carol"])["requests"] == 5 and r,
                         timeout=10, message="five settlements")
        assert 0 < row["period_spent_usd"] <= budget
        assert row["period_spent_usd"] == pytest.approx(row["spent_usd"])


def test_rate_limits_answer_in_the_clients_format(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = team_with_key(tmp_path, fake_upstream, prefix)
    key = create_key(team, "--name", "dan", "--rpm", "2")["key"]
    with team.serve() as proc:
        sdk = anthropic.Anthropic(base_url=proc.url + "/api", api_key=key, max_retries=0)
        for _ in range(2):
            sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.RateLimitError) as caught:
            sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert "'dan'" in caught.value.message and "2 requests per minute" in caught.value.message
        assert int(caught.value.response.headers["retry-after"]) >= 1
        oai = openai.OpenAI(base_url=proc.url + "/api/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
        assert "2 requests per minute" in refused.value.body["message"]  # type: ignore[index]


def test_keys_are_required_once_they_exist_and_usage_is_logged_per_key(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = team_with_key(tmp_path, fake_upstream, prefix)
    created = create_key(team, "--name", "erin", "--budget-usd", "10")
    with team.serve() as proc:
        assert httpx.post(proc.url + "/api/v1/messages", json={}).status_code == 401
        bad = anthropic.Anthropic(base_url=proc.url + "/api", api_key="ccp_not-a-key", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            bad.models.list()
        sdk = anthropic.Anthropic(base_url=proc.url + "/api", api_key=created["key"], max_retries=0)
        n = nonce()
        answer = sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": n}])
        assert answer.usage.input_tokens > 0
        row = wait_until(lambda: (r := keys_list(team)["erin"])["requests"] == 1 and r, timeout=10,
                         message="settlement")
        assert row["input_tokens"] == answer.usage.input_tokens
        assert row["spent_usd"] > 0 and row["period"] == "month"
        # The access-log event names the key (id and name, never the key) and what it cost.
        stream = redis_sync.Redis.from_url(REDIS_URL)

        def event() -> dict[str, Any] | None:
            for _, fields in stream.xrange(prefix + "access-log"):
                doc = json.loads(fields[b"e"])
                if doc.get("key_id") == created["id"]:
                    return doc  # type: ignore[no-any-return]
            return None

        doc = wait_until(event, timeout=10, message="the access-log event")
        assert doc["key_name"] == "erin" and doc["cost_usd"] == pytest.approx(row["spent_usd"])
        assert created["key"] not in json.dumps(doc)
        assert created["key"] not in proc.log_text()


def test_revocation_reaches_every_replica_within_the_cache_time(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = team_with_key(tmp_path, fake_upstream, prefix)
    key = create_key(team, "--name", "frank")["key"]
    # Two gateways (each its own process, data dir and key cache) on the same Redis.
    env = {"REDIS__URL": REDIS_URL, "REDIS__KEY_PREFIX": prefix, "SECURITY__KEY_CACHE_SECONDS": "2",
           "AUTH__API_KEY": team.tokens["main"]}
    replicas: list[Proc] = [
        launch_serve(tmp_path / f"replica-{i}", fake_url=fake_upstream.url, claude_config_dir=None, env=env)
        for i in range(2)
    ]
    try:
        def status(proc: Proc) -> int:
            return httpx.get(proc.url + "/api/v1/models", headers={"x-api-key": key}).status_code

        assert [status(p) for p in replicas] == [200, 200]
        team.ccproxy("keys", "revoke", "frank")
        revoked_at = time.monotonic()
        for proc in replicas:
            wait_until(lambda p=proc: status(p) == 401, timeout=6, interval=0.1, message="revocation")
        assert time.monotonic() - revoked_at < 2 + 2.5
        assert keys_list(team)["frank"]["revoked_at"] is not None
    finally:
        for proc in replicas:
            proc.stop()
