"""Refresh is single-flight across replicas: two auth replicas and two forwarders sharing one
Redis, twenty concurrent requests that meet an expired token, one call to the token endpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import redis

from ccproxy_core.forwarding import ForwardRequest, HttpForwarder
from tests.stack.conftest import config_dir_with
from tests.support.fake import FakeUpstream
from tests.support.stack import StackProc, launch_replicas

MODEL = "claude-sonnet-4-6"


@pytest.fixture
def replicas(tmp_path: Path, fake_upstream: FakeUpstream):  # type: ignore[no-untyped-def]
    started: list[StackProc] = []

    def start(config_dir: Path) -> StackProc:
        stack = launch_replicas(
            tmp_path / f"run-{len(started)}", fake_url=fake_upstream.url, claude_config_dir=config_dir,
            names=["auth-1", "auth-2", "api-forwarder-1", "api-forwarder-2"],
            auth_for={"api-forwarder-1": "auth-1", "api-forwarder-2": "auth-2"},
        )
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.stop()


async def ask_all(stack: StackProc, n: int) -> list[tuple[int, dict[str, object]]]:
    """``n`` concurrent requests, alternating between the two forwarders (the gateway's client)."""
    forwarders = [HttpForwarder(stack.service_url(f"api-forwarder-{i}"), stack.internal_secret) for i in (1, 2)]

    async def one(i: int) -> tuple[int, dict[str, object]]:
        reply = await forwarders[i % 2].forward(ForwardRequest(
            path="/v1/messages", headers={"anthropic-version": "2023-06-01"},
            body={"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": f"n{i}"}]},
        ))
        return reply.status, orjson.loads(await reply.read())

    try:
        return await asyncio.gather(*[one(i) for i in range(n)])
    finally:
        for forwarder in forwarders:
            await forwarder.aclose()


async def test_twenty_requests_two_replicas_one_refresh(
    tmp_path: Path, fake_upstream: FakeUpstream, replicas
) -> None:  # type: ignore[no-untyped-def]
    old = fake_upstream.credentials(expired=True, refresh_delay=0.5)
    stack = replicas(config_dir_with(tmp_path, old))
    answers = await ask_all(stack, 20)
    assert [status for status, _ in answers] == [200] * 20, answers
    assert [a["content"][0]["text"] for _, a in answers] == [f"Echo: n{i}" for i in range(20)]  # type: ignore[index]
    calls = fake_upstream.token_calls(old["refreshToken"])
    assert len(calls) == 1 and calls[0]["status"] == 200, calls
    # Both auth replicas handed out the one new token.
    new_access = calls[0]["access_token"]
    assert len(fake_upstream.requests(token=new_access)) == 20
    assert not fake_upstream.requests(token=old["accessToken"])


async def test_a_crashed_holder_does_not_block_refresh(
    tmp_path: Path, fake_upstream: FakeUpstream, replicas
) -> None:  # type: ignore[no-untyped-def]
    """A lock left by a holder that died expires: refresh goes on after its ttl, not forever."""
    old = fake_upstream.credentials(expired=True)
    stack = replicas(config_dir_with(tmp_path, old))
    client = redis.Redis.from_url(stack.redis_url)
    # What a replica that took the lock and crashed leaves behind: the key, with its expiry.
    client.set(f"{stack.key_prefix}lock:refresh:default", "a-dead-holder", px=1500)
    started = time.monotonic()
    answers = await ask_all(stack, 4)
    elapsed = time.monotonic() - started
    assert [status for status, _ in answers] == [200] * 4, answers
    assert 1.0 < elapsed < 10, elapsed  # it waited for the dead holder's lock to expire, no longer
    assert len(fake_upstream.token_calls(old["refreshToken"])) == 1
    client.close()
