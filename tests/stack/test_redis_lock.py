"""RedisLock on the real Redis (a key prefix of the test's own) and on the embedded stand-in:
expiry frees a dead holder's lock, release never frees a stranger's, and a lock our own lost
``SET`` answer took is ours."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from ccproxy_core import redis as ccredis
from ccproxy_core.redis import Redis, RedisLock, connect
from ccproxy_core.settings import RedisSettings
from tests.support.stack import SHARED_REDIS


@pytest.fixture(params=["real", "embedded"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    url = SHARED_REDIS if request.param == "real" else None
    redis = connect(RedisSettings(url=url))
    yield redis
    await redis.aclose()


@pytest.fixture
def key() -> str:
    return f"ccproxy-test-{secrets.token_hex(6)}:lock"


async def test_held_lock_waits_for_its_expiry(client: Redis, key: str) -> None:
    await client.set(key, "another-process", px=600)  # a holder that died
    lock = RedisLock(client, key, ttl=5)
    started = time.monotonic()
    assert await lock.acquire(wait=5)
    assert 0.4 < time.monotonic() - started < 3
    assert await client.get(key) == ccredis._PROCESS_TOKEN.encode()
    await lock.release()
    assert await client.get(key) is None


async def test_gives_up_after_wait(client: Redis, key: str) -> None:
    await client.set(key, "another-process", px=5000)
    assert not await RedisLock(client, key, ttl=5).acquire(wait=0.3)
    await client.delete(key)


async def test_release_never_frees_a_strangers_lock(client: Redis, key: str) -> None:
    lock = RedisLock(client, key, ttl=0.3)
    assert await lock.acquire(wait=1)
    await asyncio.sleep(0.4)  # our ttl ran out (we were too slow) ...
    await client.set(key, "next-holder", px=5000)  # ... and someone else took it
    await lock.release()
    assert await client.get(key) == b"next-holder"
    await client.delete(key)


async def test_a_lock_our_lost_answer_took_is_ours(client: Redis, key: str) -> None:
    # What a SET NX that reached Redis but whose answer timed out leaves: our token on the key.
    await client.set(key, ccredis._PROCESS_TOKEN, px=30_000)
    lock = RedisLock(client, key, ttl=5)
    started = time.monotonic()
    assert await lock.acquire(wait=5)
    assert time.monotonic() - started < 0.5  # not 30 s of waiting for ourselves
    assert 0 < await client.pttl(key) <= 5000  # and it lives a full ttl from now, no longer
    await lock.release()


async def test_holders_in_one_process_take_turns(client: Redis, key: str) -> None:
    order: list[str] = []

    async def hold(name: str) -> None:
        async with RedisLock(client, key, ttl=5):
            order.append(f"{name} in")
            await asyncio.sleep(0.05)
            order.append(f"{name} out")

    await asyncio.gather(hold("a"), hold("b"))
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
    assert await client.get(key) is None
