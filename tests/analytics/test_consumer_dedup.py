"""Exactly once in ClickHouse from at-least-once delivery: the analytics consumer against a real
engine over ClickHouse's HTTP interface (chDB behind ``tests/chdb_http.py``) and the real Redis.

A crash between the insert and the ack is staged by hand: a consumer reads entries (now pending
for it) and they are inserted, but never acknowledged. When the consumer comes back under the
same name, or another one claims the entries, they are inserted again; the table holds two
physical copies and every query (``FINAL``) sees one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from ccproxy_analytics.consumer import COLUMNS, AccessLogConsumer, row
from ccproxy_analytics.store import ClickHouse
from ccproxy_core.access_log import AccessLogEvent, RequestLog
from ccproxy_core.models import TokenUsage
from tests.analytics.conftest import ChdbServer


def event(n: int) -> AccessLogEvent:
    log = RequestLog("/api/v1/messages", request_id=f"req_{n:05d}")
    log.set_status(200)
    log.set_usage(TokenUsage(model="claude-sonnet-4-5", input_tokens=10, output_tokens=5))
    return log.event()


@pytest.fixture
async def redis(key_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url("redis://127.0.0.1:6379/0")
    yield client
    keys = [k async for k in client.scan_iter(match=key_prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def store(chdb_server: ChdbServer) -> AsyncIterator[ClickHouse]:
    ch = ClickHouse(chdb_server.url, database=f"t_{uuid.uuid4().hex[:8]}")
    await ch.ready()
    yield ch
    await ch.aclose()


async def counts(store: ClickHouse) -> tuple[int, int, int]:
    """(rows stored, rows seen with FINAL, distinct request ids)."""
    raw = await store.query(f"SELECT count() AS n FROM {store.table}")  # noqa: S608
    final = await store.query(f"SELECT count() AS n, uniqExact(request_id) AS u FROM {store.table} FINAL")  # noqa: S608
    return raw[0]["n"], final[0]["n"], final[0]["u"]


async def until(predicate, within: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def consumer(redis: Redis, store: ClickHouse, stream: str, name: str, **kw: object) -> AccessLogConsumer:
    return AccessLogConsumer(redis, store, stream, consumer=name, batch_seconds=0.05, block_ms=100, **kw)  # type: ignore[arg-type]


async def test_crash_between_insert_and_ack_duplicates_nothing(
    redis: Redis, store: ClickHouse, key_prefix: str
) -> None:
    stream = key_prefix + "access-log"
    await redis.xgroup_create(stream, "analytics", id="0", mkstream=True)
    for n in range(20):
        await redis.xadd(stream, event(n).to_stream())  # type: ignore[arg-type]
    # The consumer "a" reads all 20 and inserts them... then dies before XACK.
    read = await redis.xreadgroup("analytics", "a", {stream: ">"}, count=100)
    entries = read[0][1]
    assert len(entries) == 20
    await store.insert(store.table, [row(AccessLogEvent.from_stream(f)) for _, f in entries], COLUMNS)
    assert (await redis.xpending(stream, "analytics"))["pending"] == 20

    # "a" restarts: its own pending entries come first, are inserted again, and acknowledged.
    restarted = consumer(redis, store, stream, "a")
    restarted.start()
    await until(lambda: _pending_is(redis, stream, 0))
    await restarted.stop()
    assert restarted.state.inserted == 20  # the 20 were really written a second time...
    stored, final, distinct = await counts(store)
    assert stored in (20, 40)  # (40 until a background merge collapses them)
    assert final == distinct == 20  # ...and queries see each request once


async def test_entries_of_a_dead_consumer_are_claimed(redis: Redis, store: ClickHouse, key_prefix: str) -> None:
    stream = key_prefix + "access-log"
    await redis.xgroup_create(stream, "analytics", id="0", mkstream=True)
    for n in range(10):
        await redis.xadd(stream, event(n).to_stream())  # type: ignore[arg-type]
    await redis.xreadgroup("analytics", "dead", {stream: ">"}, count=100)  # read, never acked
    for n in range(10, 15):
        await redis.xadd(stream, event(n).to_stream())  # type: ignore[arg-type]

    survivor = consumer(redis, store, stream, "b", claim_idle_ms=200)
    survivor.start()
    await until(lambda: _final_is(store, 15))
    await until(lambda: _pending_is(redis, stream, 0))
    await survivor.stop()
    assert await counts(store) == (15, 15, 15)


async def test_a_retried_xadd_is_one_row(redis: Redis, store: ClickHouse, key_prefix: str) -> None:
    """The emitter may write an event twice (a pipeline that failed after Redis applied it)."""
    stream = key_prefix + "access-log"
    twice = event(1)
    await redis.xadd(stream, twice.to_stream())  # type: ignore[arg-type]
    await redis.xadd(stream, twice.to_stream())  # type: ignore[arg-type]
    await redis.xadd(stream, {"e": b"{not json"})
    worker = consumer(redis, store, stream, "c")
    worker.start()
    await until(lambda: _pending_is(redis, stream, 0))
    await until(lambda: _final_is(store, 1))
    await worker.stop()
    assert worker.state.invalid == 1  # the malformed entry is counted, acknowledged, skipped
    stored, final, _ = await counts(store)
    assert final == 1 and stored in (1, 2)  # one batch may already collapse on insert


async def _pending_is(redis: Redis, stream: str, n: int) -> bool:
    try:
        info = await redis.xinfo_groups(stream)
    except Exception:
        return False
    if not info:
        return False
    group = info[0]
    return int(group["pending"]) == n and int(group.get("lag") or 0) == 0


async def _final_is(store: ClickHouse, n: int) -> bool:
    return (await counts(store))[1] == n
