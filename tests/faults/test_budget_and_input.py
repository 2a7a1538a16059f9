"""Issue 13: a hostile member or a careless operator against budgets, the bind guard and the
gateway's input handling. Real ``ccproxy serve`` / ``ccproxy up`` / ``ccproxy run auth`` processes,
the real Redis (a key prefix of each test's own), the fake upstream; raw HTTP where a test must
send what no SDK would (``true`` as a token limit, 300-deep JSON).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest
from redis.asyncio import Redis

from ccproxy_auth.keys import KeyStore
from ccproxy_core.client_keys import UsageReport
from tests.accounts.helpers import MODEL, REDIS_URL, Team, nonce
from tests.accounts.test_keys import create_key, team_with_key
from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import Proc, wait_until
from tests.support.serve import CCPROXY, isolated_env
from tests.support.stack import delete_prefix, launch_replicas, new_prefix

LEAD = "cc-faults-lead-token-0123456789abcdef"
ADMIN = "cc-faults-admin-token-0123456789abcdef"
#: Token limits a hostile member might send; each must be a 400 before anything is reserved.
HOSTILE_MAX_TOKENS: list[Any] = [-100_000_000, 4611686018427387904, 9223372036854775807, True, 0, "5", 1.5,
                                 None, 10**30]


@pytest.fixture
def prefix() -> Iterator[str]:
    value = new_prefix()
    yield value
    delete_prefix(REDIS_URL, value)


def key_row(team: Team, name: str) -> dict[str, Any]:
    rows = json.loads(team.ccproxy("keys", "list", "--json", "--all").stdout)
    return next(row for row in rows if row["name"] == name)  # type: ignore[no-any-return]


def counter(prefix: str, key_id: str, what: str) -> int:
    async def read() -> int:
        client = Redis.from_url(REDIS_URL)
        try:
            raw = await client.get(f"{prefix}keys:id:{key_id}:{what}")
            return int(raw or 0)
        finally:
            await client.aclose()

    return asyncio.run(read())


# -- 1. max_tokens and the budget ------------------------------------------------------------------


def test_hostile_max_tokens_are_400s_and_a_cent_a_day_budget_still_holds(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    """Attack: a $0.01/day key sends max_tokens -1e8, 2**62, 2**63-1, true, 0, "5" (and more).
    Expected: each is a 400 invalid_request_error that never reaches the upstream, nothing is
    reserved, and afterwards the key spends at most its cent and is then refused with 402."""
    team = team_with_key(tmp_path, fake_upstream, prefix)
    created = create_key(team, "--name", "mallory", "--budget-usd", "0.01", "--period", "day")
    with team.serve() as proc:
        headers = {"x-api-key": created["key"], "anthropic-version": "2023-06-01"}
        marker = nonce()
        statuses: list[int] = []
        for value in HOSTILE_MAX_TOKENS:
            body = {"model": MODEL, "max_tokens": value, "messages": [{"role": "user", "content": marker}]}
            for path in ("/api/v1/messages", "/sdk/v1/messages"):
                resp = httpx.post(proc.url + path, json=body, headers=headers, timeout=30)
                statuses.append(resp.status_code)
                assert resp.status_code == 400, (path, value, resp.status_code, resp.text)
                error = resp.json()
                assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
                assert "max_tokens" in error["error"]["message"]
            # The OpenAI routes follow the same rules, in the OpenAI error shape.
            for path, field in (("/api/v1/chat/completions", "max_tokens"),
                                ("/api/v1/chat/completions", "max_completion_tokens"),
                                ("/api/v1/responses", "max_output_tokens")):
                if value is None:
                    continue  # no limit at all is OpenAI's default (ccproxy picks one)
                oai: dict[str, Any] = {"model": MODEL, field: value}
                if path.endswith("responses"):
                    oai["input"] = marker
                else:
                    oai["messages"] = [{"role": "user", "content": marker}]
                resp = httpx.post(proc.url + path, json=oai, headers=headers, timeout=30)
                assert resp.status_code == 400, (path, field, value, resp.status_code, resp.text)
                assert resp.json()["error"]["type"] == "invalid_request_error"
        # Above the model's output limit (64k for Haiku 4.5) is the client's 400 too.
        too_many = {"model": MODEL, "max_tokens": 64_001, "messages": [{"role": "user", "content": marker}]}
        resp = httpx.post(proc.url + "/api/v1/messages", json=too_many, headers=headers, timeout=30)
        assert resp.status_code == 400 and "64000" in resp.json()["error"]["message"], resp.text
        assert not [r for r in fake_upstream.requests(path="/v1/messages") if marker in json.dumps(r["body"])]
        assert counter(prefix, created["id"], "reserved") == 0
        # The budget holds: real spending stops at the cent with a 402, never a 500.
        sdk = anthropic.Anthropic(base_url=proc.url + "/api", api_key=created["key"], max_retries=0, timeout=30)
        served = 0
        refused: anthropic.APIStatusError | None = None
        for _ in range(15):
            try:
                sdk.messages.create(model=MODEL, max_tokens=400,
                                    messages=[{"role": "user", "content": f"{nonce()} [[fake:long=200]]"}])
                served += 1
            except anthropic.APIStatusError as exc:
                refused = exc
                break
        assert refused is not None and refused.status_code == 402, refused
        assert refused.body["error"]["type"] == "billing_error"  # type: ignore[index]
        assert 1 <= served <= 6
        row = wait_until(lambda: (r := key_row(team, "mallory"))["requests"] == served and r, timeout=10,
                         message="settlements")
        assert 0 < row["period_spent_usd"] <= 0.01
        assert counter(prefix, created["id"], "reserved") == 0
    assert "Traceback" not in proc.log_text()


async def _store(prefix: str) -> AsyncIterator[tuple[KeyStore, Redis]]:
    client = Redis.from_url(REDIS_URL)
    try:
        yield KeyStore(client, prefix), client
    finally:
        await client.aclose()


def test_reservation_arithmetic_never_goes_negative_or_overflows(prefix: str) -> None:
    """Whatever the numbers handed to admit/settle (a gateway bug, an old gateway, a corrupt
    counter), no reservation or spend goes negative or overflows, and the budget still holds."""

    async def scenario() -> None:
        async for store, client in _store(prefix):
            info, _ = await store.create("arith", budget_usd=0.01, period="day")
            reserved = f"{prefix}keys:id:{info.id}:reserved"
            # A negative token limit reserves the input's worth, never a negative amount.
            low = await store.admit(info, MODEL, 100, -100_000_000)
            assert low.estimated_micro_usd >= 0 and int(await client.get(reserved)) >= 0
            # Settling a negative usage releases the reservation and adds nothing.
            await store.settle(low, UsageReport(model=MODEL, input_tokens=-10**9, output_tokens=-10**12))
            assert int(await client.get(reserved)) == 0
            # A limit near 2**62 or beyond is refused by the budget, not by an overflow.
            for huge in (4611686018427387904, 9223372036854775807, 10**30):
                with pytest.raises(Exception) as caught:
                    await store.admit(info, MODEL, 100, huge)
                assert getattr(caught.value, "status", None) == 402, caught.value
            # An expired reservation an old gateway left negative is released without a Lua error
            # (the issue saw every request of the key answer 500 once it expired).
            await client.hset(f"{prefix}keys:id:{info.id}:resamt", "old", "-1499999928:5")
            await client.zadd(f"{prefix}keys:id:{info.id}:resv", {"old": time.time() - 10})
            await store.settle(await store.admit(info, MODEL, 100, 10), UsageReport(model=MODEL))
            assert int(await client.get(reserved)) == 0
            # A counter left negative by an old gateway counts as nothing held, not as credit.
            await client.set(reserved, -1_499_999_928)
            with pytest.raises(Exception) as caught:
                await store.admit(info, MODEL, 100, 64_000)
            assert getattr(caught.value, "status", None) == 402
            ok = await store.admit(info, MODEL, 100, 10)
            assert int(await client.get(reserved)) == ok.estimated_micro_usd
            # An absurd usage (10**30 tokens) settles to a capped amount, not an overflow.
            settled = await store.settle(ok, UsageReport(model=MODEL, output_tokens=10**30))
            assert 0.01 < settled.spent_usd < 10**13
            assert int(await client.get(reserved)) == 0
            with pytest.raises(Exception) as caught:
                await store.admit(info, MODEL, 100, 10)
            assert getattr(caught.value, "status", None) == 402

    asyncio.run(scenario())


# -- 3. the bind guard -----------------------------------------------------------------------------


def refused_to_start(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run ``ccproxy ARGS``, which must exit on its own (2) within 30 s; its stderr. A process
    that starts serving instead is killed with everything it started, and the test fails."""
    process = subprocess.Popen([str(CCPROXY), *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        pytest.fail(f"`ccproxy {' '.join(args)}` started instead of refusing")
    assert process.returncode == 2, (process.returncode, out, err)
    assert "Traceback" not in out + err
    return err


@pytest.mark.parametrize(
    ("token", "says"),
    [("", "no client authentication"), ("   \t", "no client authentication"),
     ("short-token", "at least 16 characters")],
    ids=["empty", "blank", "short"],
)
def test_blank_or_short_token_does_not_open_the_lan(tmp_path: Path, token: str, says: str) -> None:
    """Attack: ``SECURITY__AUTH_TOKEN= ccproxy serve --host 0.0.0.0`` (and ``ccproxy up
    --auth-token ''``). Expected: both refuse to start and say why."""
    env = isolated_env(tmp_path, overrides={"SECURITY__AUTH_TOKEN": token})
    err = refused_to_start(["serve", "--host", "0.0.0.0", "--port", str(free_port())], env, tmp_path)
    assert says in err and "SECURITY__AUTH_TOKEN" in err
    assert not token.strip() or token not in err  # a token, even a bad one, is never echoed
    bare = isolated_env(tmp_path, overrides={"SECURITY__AUTH_TOKEN": None})
    err = refused_to_start(["up", "--host", "0.0.0.0", "--port", str(free_port()), "--auth-token", token],
                           bare, tmp_path)
    assert says in err and "SECURITY__AUTH_TOKEN" in err


# -- 9. bad input is the client's 400 --------------------------------------------------------------


def _nested(depth: int) -> str:
    """JSON text nested ``depth`` levels deep (objects and arrays in turn)."""
    opening = "".join('{"k":' if i % 2 else "[" for i in range(depth))
    closing = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return opening + '"x"' + closing


@pytest.mark.parametrize("depth", [256, 1024])
def test_deeply_nested_json_is_a_400(start_serve: Any, depth: int) -> None:
    """Attack: a body 256 to 1024 levels deep (orjson parses up to 1024, writes up to 255).
    Expected: 400 invalid_request_error on messages and count_tokens, keyed or not, no 500."""
    proc: Proc = start_serve(env={"SECURITY__AUTH_TOKEN": LEAD})
    headers = {"x-api-key": LEAD, "content-type": "application/json"}
    head = json.dumps({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    raw = (head[:-1] + ', "metadata": ' + _nested(depth - 1) + "}").encode()
    for path in ("/api/v1/messages", "/api/v1/messages/count_tokens", "/sdk/v1/messages",
                 "/api/v1/chat/completions"):
        resp = httpx.post(proc.url + path, content=raw, headers=headers, timeout=30)
        assert resp.status_code == 400, (path, resp.status_code, resp.text)
        assert "nested" in resp.text
    assert "Traceback" not in proc.log_text()


def test_a_logs_cursor_decoding_to_a_huge_number_is_a_400(start_serve: Any) -> None:
    proc: Proc = start_serve(env={"SECURITY__AUTH_TOKEN": LEAD})
    for ms in ("9" * 30, "-" + "9" * 20, "1" + "0" * 5000, "nan", str(2**63)):
        cursor = base64.urlsafe_b64encode(f"{ms}|req_x".encode()).decode().rstrip("=")
        resp = httpx.get(proc.url + "/logs/query", params={"cursor": cursor}, headers={"x-api-key": LEAD},
                         timeout=30)
        assert resp.status_code == 400, (ms[:20], resp.status_code, resp.text)
        assert resp.json()["error"]["type"] == "invalid_request_error"
    # The time filters likewise: a number or a date no datetime arithmetic can hold.
    for params in ({"since": "1e30"}, {"until": "1e30"}, {"until": "0001-01-01"}, {"since": "-1e30"}):
        resp = httpx.get(proc.url + "/logs/query", params=params, headers={"x-api-key": LEAD}, timeout=30)
        assert resp.status_code == 400, (params, resp.status_code, resp.text)
    for params in ({"since": "1e11"}, {"until": "-1e11"}):  # far, but times: an answer, maybe empty
        resp = httpx.get(proc.url + "/logs/query", params=params, headers={"x-api-key": LEAD}, timeout=30)
        assert resp.status_code < 500, (params, resp.status_code, resp.text)
    assert "Traceback" not in proc.log_text()


def test_admin_key_limits_reject_absurd_numbers_and_leave_nothing_behind(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Attack: ``POST /admin/keys`` with budget_usd 1e308, "NaN", Infinity, negative (and the same
    for rpm, tpm, expires_at). Expected: 400 each, and the name is still free afterwards."""
    auth = launch_replicas(tmp_path / "auth", fake_url=fake_upstream.url, claude_config_dir=tmp_path / "none",
                           names=["auth-1"], auth_for={}, env={"SECURITY__ADMIN_TOKEN": ADMIN})
    try:
        admin = auth.service_url("auth-1") + "/admin/keys"
        headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
        hostile = [
            *(f'{{"name": "zed", "budget_usd": {v}}}' for v in ("1e308", '"NaN"', '"Infinity"', '"-inf"', "-5", "0")),
            *(f'{{"name": "zed", "rpm": {v}}}' for v in ("1e308", "-1", "9223372036854775807", "true", "2.5")),
            *(f'{{"name": "zed", "tpm": {v}}}' for v in ('"NaN"', "0", "18446744073709551615")),
            *(f'{{"name": "zed", "expires_at": {v}}}' for v in ('"NaN"', "1e308", "-1")),
            '{"name": "   "}',
        ]
        for raw in hostile:
            resp = httpx.post(admin, content=raw, headers=headers, timeout=30)
            assert resp.status_code == 400, (raw, resp.status_code, resp.text)
            assert resp.json()["error"]["type"] == "invalid_request_error"
            assert httpx.delete(admin + "/zed", headers=headers).status_code == 404
        listed = httpx.get(admin + "?all=1", headers=headers).json()
        assert listed == []
        made = httpx.post(admin, json={"name": "zed", "budget_usd": 5, "rpm": 60, "tpm": 100_000}, headers=headers)
        assert made.status_code == 201, made.text
        assert made.json()["budget_usd"] == 5
    finally:
        auth.stop()
    assert "Traceback" not in auth.log_text()


# -- 11. ANTHROPIC__VERSION ------------------------------------------------------------------------


def test_anthropic_version_setting_is_sent_when_the_client_sends_none(start_serve: Any) -> None:
    proc: Proc = start_serve(env={"ANTHROPIC__VERSION": "2099-01-01"})
    marker = nonce()
    body = {"model": MODEL, "max_tokens": 4096,
            "messages": [{"role": "user", "content": f"{marker} [[fake:echo_request]]"}]}
    # No anthropic-version header at all (httpx, not an SDK: the SDKs always send one).
    resp = httpx.post(proc.url + "/api/v1/messages", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    seen = json.loads(resp.json()["content"][0]["text"])
    assert seen["headers"]["anthropic-version"] == "2099-01-01"
    # A client's own version still wins.
    resp = httpx.post(proc.url + "/api/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"},
                      timeout=30)
    assert json.loads(resp.json()["content"][0]["text"])["headers"]["anthropic-version"] == "2023-06-01"


# -- 12. a new key works at once ------------------------------------------------------------------


def test_a_new_member_key_works_at_once_despite_the_key_cache(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    """Attack (an operator's bad day): a lead token is set, the gateway has cached "no client keys
    exist", the lead creates Alice's key. Expected: Alice's key works on her first request, well
    within SECURITY__KEY_CACHE_SECONDS (60 here), not 401 "invalid client key"."""
    team = team_with_key(tmp_path, fake_upstream, prefix, SECURITY__AUTH_TOKEN=LEAD, SECURITY__KEY_CACHE_SECONDS="60")
    with team.serve() as proc:
        lead = anthropic.Anthropic(base_url=proc.url + "/api", api_key=LEAD, max_retries=0)
        lead.models.list()  # the gateway now trusts "no keys exist" for a minute
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=proc.url + "/api", api_key="ccp_not-yet-a-key", max_retries=0).models.list()
        started = time.monotonic()
        alice = create_key(team, "--name", "alice")
        sdk = anthropic.Anthropic(base_url=proc.url + "/api", api_key=alice["key"], max_retries=0)
        answer = sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": nonce()}])
        assert answer.content[0].text.startswith("Echo:")
        # A second key, while the gateway knows keys exist, works at once as well.
        bob = create_key(team, "--name", "bob")
        anthropic.Anthropic(base_url=proc.url + "/api", api_key=bob["key"], max_retries=0).models.list()
        assert time.monotonic() - started < 30
        # The lead token still works, and an unknown key is still refused.
        lead.models.list()
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=proc.url + "/api", api_key="ccp_still-not-a-key", max_retries=0).models.list()

