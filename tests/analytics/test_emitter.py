"""The gateway's emitter: never delays a request, and keeps events through a Redis outage.

A private redis-server (append-only, so its data survives the restart) is stopped while events
are emitted and started again; every event must arrive, in order, exactly once.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from ccproxy_core.access_log import AccessLogEmitter, AccessLogEvent, RequestLog
from ccproxy_core.metrics import Metrics
from tests.support.redis_server import OwnRedis


def make_event(n: int) -> AccessLogEvent:
    log = RequestLog("/api/v1/messages", request_id=f"req_{n:05d}")
    log.set_status(200)
    return log.event()


def client(server: OwnRedis) -> Redis:
    return Redis.from_url(server.url, socket_connect_timeout=0.3, socket_timeout=0.5)


async def stream_ids(redis: Redis, stream: str) -> list[str]:
    return [AccessLogEvent.from_stream(fields).request_id for _, fields in await redis.xrange(stream)]


async def test_events_survive_a_redis_outage(aof_redis: OwnRedis) -> None:
    redis = client(aof_redis)
    metrics = Metrics("gateway")
    emitter = AccessLogEmitter(redis, "ccproxy:access-log", metrics=metrics)
    for n in range(10):
        emitter.emit(make_event(n))
    assert await emitter.flush(5)
    assert await redis.xlen("ccproxy:access-log") == 10

    aof_redis.stop()
    started = time.perf_counter()
    for n in range(10, 60):
        emitter.emit(make_event(n))
    # emit() does no I/O: 50 calls with Redis gone cost next to nothing.
    assert time.perf_counter() - started < 0.2
    await asyncio.sleep(0)  # let the sender try (and fail) at least once
    assert not await emitter.flush(1.0)
    assert emitter.buffered == 50
    assert metrics.access_log_buffered.labels("gateway")._value.get() == 50

    aof_redis.start()
    assert await emitter.flush(15)
    ids = await stream_ids(redis, "ccproxy:access-log")
    assert ids == [f"req_{n:05d}" for n in range(60)]  # all, in order, none twice
    assert emitter.dropped == 0
    await emitter.aclose()
    await redis.aclose()


async def test_a_full_buffer_drops_the_oldest_and_counts_them(aof_redis: OwnRedis) -> None:
    redis = client(aof_redis)
    metrics = Metrics("gateway")
    emitter = AccessLogEmitter(redis, "s", buffer_size=20, metrics=metrics)
    aof_redis.stop()
    for n in range(50):
        emitter.emit(make_event(n))
    assert emitter.buffered <= 20
    aof_redis.start()
    assert await emitter.flush(15)
    ids = await stream_ids(redis, "s")
    assert ids == [f"req_{n:05d}" for n in range(30, 50)]
    assert emitter.dropped == 30
    assert metrics.access_log_events.labels("gateway", "dropped")._value.get() == 30
    await emitter.aclose()
    await redis.aclose()


async def test_without_redis_emit_only_counts() -> None:
    metrics = Metrics("gateway")
    emitter = AccessLogEmitter(None, "s", metrics=metrics)
    emitter.emit(make_event(1))
    assert emitter.buffered == 0
    assert metrics.access_log_events.labels("gateway", "emitted")._value.get() == 1
