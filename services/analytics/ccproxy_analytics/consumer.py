"""From the Redis stream into ClickHouse: consumer group, batches, ack only after the insert.

Delivery is at least once and the table makes it exactly once: an entry is acknowledged only
after the batch holding it was inserted, so a crash in between delivers it again (our own
pending entries on restart, or another replica claims them after ``claim_idle_ms``), and the
ReplacingMergeTree keyed on the request id keeps one row per request.

While ClickHouse is down the consumer keeps its one batch and retries it; it reads nothing
more, so new events wait in Redis (the stream is capped at ``ANALYTICS__STREAM_MAXLEN``). The
backlog (undelivered + unacknowledged entries) is a metric, and a warning as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ccproxy_analytics.store import ClickHouse, ClickHouseUnavailable
from ccproxy_core.access_log import AccessLogEvent
from ccproxy_core.metrics import Metrics
from ccproxy_core.redis import as_text

log = logging.getLogger(__name__)

#: Columns written, in order; each is a field of AccessLogEvent.
COLUMNS = [name for name in AccessLogEvent.model_fields if name != "v"]


def row(event: AccessLogEvent) -> list[Any]:
    return [getattr(event, name) for name in COLUMNS]


@dataclass
class ConsumerState:
    """What ``/logs/status`` reports about the consumer."""

    inserted: int = 0
    invalid: int = 0
    batches: int = 0
    last_insert_at: datetime | None = None
    clickhouse_ok: bool | None = None
    redis_ok: bool | None = None
    backlog: int = 0
    pending: int = 0
    lag: int = 0
    warnings: list[str] = field(default_factory=list)


class AccessLogConsumer:
    def __init__(
        self,
        redis: Redis,
        store: ClickHouse,
        stream: str,
        group: str = "analytics",
        consumer: str | None = None,
        batch_size: int = 1000,
        batch_seconds: float = 1.0,
        backlog_warning: int = 10_000,
        stream_maxlen: int = 1_000_000,
        metrics: Metrics | None = None,
        claim_idle_ms: int = 60_000,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.store = store
        self.stream = stream
        self.group = group
        self.consumer = consumer or socket.gethostname()
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.backlog_warning = backlog_warning
        self.stream_maxlen = stream_maxlen
        self.metrics = metrics or Metrics("analytics")
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.state = ConsumerState()
        self._task: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        self._last_claim = 0.0
        self._last_refresh = 0.0
        #: Set after each successful insert (tests and /logs/status wait on it).
        self.inserted_event = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="access-log-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        """Consume until cancelled. Survives Redis and ClickHouse outages."""
        try:
            await self.store.ready()  # connect and migrate early, so the first insert is quick
            self.state.clickhouse_ok = True
        except ClickHouseUnavailable as exc:
            log.warning("analytics: ClickHouse not reachable yet (%s); events wait in Redis", exc)
            self.state.clickhouse_ok = False
        delay = 0.2
        while True:
            try:
                await self._ensure_group()
                await self._consume()
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                self._redis_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("analytics: consumer error; restarting the loop")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _redis_down(self, exc: Exception) -> None:
        if self.state.redis_ok is not False:
            log.warning("analytics: Redis unreachable (%s); retrying", type(exc).__name__)
        self.state.redis_ok = False

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.state.redis_ok = True

    # -- the loop ------------------------------------------------------------------------

    async def _consume(self) -> None:
        # Entries delivered to this consumer before a restart and never acknowledged come first.
        await self._drain_own_pending()
        while True:
            await self._claim_abandoned()
            entries = await self._read_batch()
            if entries:
                await self._write(entries)
            if entries or time.monotonic() - self._last_refresh > 1.0:
                await self._refresh_backlog()

    async def _drain_own_pending(self) -> None:
        while True:
            resp = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: "0"}, count=self.batch_size
            )
            entries = _entries(resp)
            if not entries:
                return
            await self._write(entries)

    async def _claim_abandoned(self) -> None:
        """Take over entries another consumer read and never acknowledged (it died)."""
        now = time.monotonic()
        if now - self._last_claim < self.claim_idle_ms / 1000 / 2:
            return
        self._last_claim = now
        start = "0-0"
        while True:
            resp = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms,
                start_id=start, count=self.batch_size,
            )
            start = as_text(resp[0])
            entries = list(resp[1])
            if entries:
                log.info("analytics: claimed %d unacknowledged events from a stopped consumer", len(entries))
                await self._write(entries)
            if start == "0-0" or not resp[1]:
                return

    async def _read_batch(self) -> list[tuple[Any, Any]]:
        """Up to batch_size entries; waits at most batch_seconds after the first one."""
        batch: list[tuple[Any, Any]] = []
        deadline: float | None = None
        while len(batch) < self.batch_size:
            if deadline is None:
                block = self.block_ms
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                block = max(1, int(remaining * 1000))
            began = time.monotonic()
            resp = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.batch_size - len(batch), block=block
            )
            entries = _entries(resp)
            if not entries:
                await _pause_if_early(began, block)
                if deadline is None:
                    return batch  # idle: let the caller refresh metrics
                continue
            if deadline is None:
                deadline = time.monotonic() + self.batch_seconds
            batch.extend(entries)
        return batch

    async def _write(self, entries: list[tuple[Any, Any]]) -> None:
        ids = [eid for eid, _ in entries]
        rows: list[list[Any]] = []
        for eid, fields in entries:
            if fields is None:  # trimmed from the stream before we could read it
                continue
            try:
                rows.append(row(AccessLogEvent.from_stream(fields)))
            except (ValidationError, ValueError) as exc:
                self.state.invalid += 1
                self.metrics.access_log_events.labels(self.metrics.service, "invalid").inc()
                log.warning("analytics: dropping malformed event %s: %s", as_text(eid), str(exc)[:200])
        if rows:
            await self._insert_until_done(rows)
        await self.redis.xack(self.stream, self.group, *ids)

    async def _insert_until_done(self, rows: list[list[Any]]) -> None:
        delay = 0.2
        while True:
            try:
                await self.store.insert(self.store.table, rows, COLUMNS)
            except ClickHouseUnavailable as exc:
                self.metrics.access_log_insert_errors.labels(self.metrics.service).inc()
                if self.state.clickhouse_ok is not False:
                    log.warning("analytics: ClickHouse insert failed (%s); events wait in Redis", exc)
                self.state.clickhouse_ok = False
                with contextlib.suppress(RedisError):
                    await self._refresh_backlog()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.state.clickhouse_ok is False:
                log.info("analytics: ClickHouse is back; writing the backlog")
            self.state.clickhouse_ok = True
            self.state.inserted += len(rows)
            self.state.batches += 1
            self.state.last_insert_at = datetime.now(UTC)
            self.metrics.access_log_events.labels(self.metrics.service, "inserted").inc(len(rows))
            self.inserted_event.set()
            return

    async def _refresh_backlog(self) -> None:
        self._last_refresh = time.monotonic()
        groups = await self.redis.xinfo_groups(self.stream)
        length = await self.redis.xlen(self.stream)
        for info in groups:
            name = info.get("name")
            if as_text(name) != self.group:
                continue
            pending = int(info.get("pending") or 0)
            lag = info.get("lag")
            if lag is None:  # unknown after trimming: count what was not read yet at most
                read = info.get("entries-read")
                lag = max(0, length - int(read)) if read is not None else length
            self.state.pending, self.state.lag = pending, int(lag)
            self.state.backlog = pending + int(lag)
        self.metrics.access_log_backlog.labels(self.metrics.service).set(self.state.backlog)
        self._warn_backlog()

    def _warn_backlog(self) -> None:
        backlog = self.state.backlog
        warnings = []
        if backlog > self.backlog_warning:
            warnings.append(
                f"{backlog} access-log events wait to be written to ClickHouse "
                f"(warning above {self.backlog_warning})"
            )
        if backlog > self.stream_maxlen * 0.8:
            warnings.append(
                f"the access-log stream is near its cap of {self.stream_maxlen}: older events "
                "will be trimmed before they are written"
            )
        self.state.warnings = warnings
        now = time.monotonic()
        if warnings and now - self._last_warning > 30:
            self._last_warning = now
            for text in warnings:
                log.warning("analytics: %s", text)


#: How often an idle consumer looks again when the read did not block (see below).
IDLE_POLL_S = 0.05


async def _pause_if_early(began: float, block_ms: int) -> None:
    """The embedded stand-in (fakeredis) answers a blocking XREADGROUP at once instead of
    waiting: without this pause an idle ``ccproxy serve`` spins a whole core polling it. Real
    Redis answers empty only after the block time, so this never waits there."""
    rest = block_ms / 1000 - (time.monotonic() - began)
    if rest > 0.002:
        await asyncio.sleep(min(rest, IDLE_POLL_S))


def _entries(resp: Any) -> list[tuple[Any, Any]]:
    return [entry for _stream, entries in resp or [] for entry in entries]
