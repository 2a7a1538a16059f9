"""From the Redis stream into ClickHouse: a consumer group, batches, an ack only after the insert.

At least once (unacked entries come again: ours on restart, another replica's after ``claim_idle_ms``), made
exactly once by the ReplacingMergeTree (one row per request id). While ClickHouse is down the one batch is
retried and events wait in Redis (capped at ``ANALYTICS__STREAM_MAXLEN``); the backlog is a metric and a warning."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ccproxy_analytics.store import ClickHouse, ClickHouseUnavailable
from ccproxy_core.access_log import AccessLogEvent
from ccproxy_core.metrics import Metrics
from ccproxy_core.redis import as_text

log = logging.getLogger(__name__)

COLUMNS = [name for name in AccessLogEvent.model_fields if name != "v"]

Entry = tuple[Any, Any]


def pauses() -> Iterator[float]:
    """A retry's pauses, in seconds: doubling from 0.2, then 5 s each."""
    return itertools.chain((0.2, 0.4, 0.8, 1.6, 3.2), itertools.repeat(5.0))


def row(event: AccessLogEvent) -> list[Any]:
    return [getattr(event, name) for name in COLUMNS]


def parse_entry(eid: Any, fields: Any) -> AccessLogEvent | None:
    """None for a malformed entry, logged: one bad event must not stop the stream."""
    try:
        return AccessLogEvent.from_stream(fields)
    except ValueError as exc:  # pydantic's ValidationError is one
        log.warning("analytics: skipping malformed event %s: %s", as_text(eid), str(exc)[:200])
        return None


@dataclass
class ConsumerState:
    """The counters ``/logs/status`` reports."""

    inserted: int = 0
    invalid: int = 0
    batches: int = 0
    last_insert_at: datetime | None = None
    backlog: int = 0
    pending: int = 0
    lag: int = 0


@dataclass(eq=False)
class AccessLogConsumer:
    redis: Redis
    store: ClickHouse
    stream: str
    group: str = "analytics"
    consumer: str = field(default_factory=socket.gethostname)
    batch_size: int = 1000
    batch_seconds: float = 1.0
    backlog_warning: int = 10_000
    stream_maxlen: int = 1_000_000
    metrics: Metrics = field(default_factory=lambda: Metrics("analytics"))
    claim_idle_ms: int = 60_000
    block_ms: int = 1000
    state: ConsumerState = field(default_factory=ConsumerState, init=False)
    #: Whether each answered last (None: not asked yet).
    clickhouse_ok: bool | None = field(default=None, init=False)
    redis_ok: bool | None = field(default=None, init=False)
    warnings: list[str] = field(default_factory=list, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _last_warning: float = field(default=0.0, init=False)
    _last_claim: float = field(default=0.0, init=False)
    _last_refresh: float = field(default=0.0, init=False)

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
        try:
            await self.store.ready()  # connect and migrate early, so the first insert is quick
            self.clickhouse_ok = True
        except ClickHouseUnavailable as exc:
            log.warning("analytics: ClickHouse not reachable yet (%s); events wait in Redis", exc)
            self.clickhouse_ok = False
        for pause in pauses():
            try:
                await self._consume()
            except RedisError as exc:
                if self.redis_ok is not False:
                    log.warning("analytics: Redis unreachable (%s); retrying", type(exc).__name__)
                self.redis_ok = False
            except Exception:
                log.exception("analytics: consumer error; restarting the loop")
            await asyncio.sleep(pause)

    async def _consume(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists already
                raise
        self.redis_ok = True
        # Entries delivered to this consumer before a restart and never acknowledged come first.
        while entries := await self._read("0", self.batch_size):
            await self._write(entries)
        while True:
            await self._claim_abandoned()
            entries = await self._read_batch()
            if entries:
                await self._write(entries)
            if entries or time.monotonic() - self._last_refresh > 1.0:
                await self._refresh_backlog()

    async def _read(self, after: str, count: int, block: int | None = None) -> list[Entry]:
        """``after``: "0" for our own unacknowledged entries, ">" for new ones."""
        began = time.monotonic()
        resp = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: after}, count=count, block=block)
        entries = [entry for _stream, found in resp or [] for entry in found]
        # fakeredis (in `ccproxy serve`) answers a blocking read at once: without this pause an idle serve spins a core.
        rest = (block or 0) / 1000 - (time.monotonic() - began)
        if not entries and rest > 0.002:
            await asyncio.sleep(min(rest, 0.05))
        return entries

    async def _claim_abandoned(self) -> None:
        """Take over entries another consumer read and never acknowledged (it died)."""
        now = time.monotonic()
        if now - self._last_claim < self.claim_idle_ms / 1000 / 2:
            return
        self._last_claim = now
        start = "0-0"
        while True:
            resp = await self.redis.xautoclaim(self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms,
                                               start_id=start, count=self.batch_size)
            start, entries = as_text(resp[0]), list(resp[1])
            if entries:
                log.info("analytics: claimed %d unacknowledged events from a stopped consumer", len(entries))
                await self._write(entries)
            if start == "0-0" or not entries:
                return

    async def _read_batch(self) -> list[Entry]:
        """Up to batch_size entries; waits at most batch_seconds after the first one."""
        batch: list[Entry] = []
        deadline = time.monotonic() + self.block_ms / 1000
        while len(batch) < self.batch_size and (block := int((deadline - time.monotonic()) * 1000)) > 0:
            entries = await self._read(">", self.batch_size - len(batch), block)
            if not batch:
                if not entries:
                    return batch  # idle: let the caller refresh metrics
                deadline = time.monotonic() + self.batch_seconds
            batch.extend(entries)
        return batch

    async def _write(self, entries: list[Entry]) -> None:
        """Insert (retried until ClickHouse takes it), then ack; an entry trimmed before it was read has no fields."""
        events = [parse_entry(eid, fields) for eid, fields in entries if fields is not None]
        rows = [row(event) for event in events if event is not None]
        if invalid := len(events) - len(rows):
            self.state.invalid += invalid
            self.metrics.access_log_events.labels(self.metrics.service, "invalid").inc(invalid)
        for pause in pauses() if rows else ():
            try:
                await self.store.insert(self.store.table, rows, COLUMNS)
            except ClickHouseUnavailable as exc:
                self.metrics.access_log_insert_errors.labels(self.metrics.service).inc()
                if self.clickhouse_ok is not False:
                    log.warning("analytics: ClickHouse insert failed (%s); events wait in Redis", exc)
                self.clickhouse_ok = False
                with contextlib.suppress(RedisError):
                    await self._refresh_backlog()
                await asyncio.sleep(pause)
                continue
            if self.clickhouse_ok is False:
                log.info("analytics: ClickHouse is back; writing the backlog")
            self.clickhouse_ok = True
            self.state.inserted += len(rows)
            self.state.batches += 1
            self.state.last_insert_at = datetime.now(UTC)
            self.metrics.access_log_events.labels(self.metrics.service, "inserted").inc(len(rows))
            break
        await self.redis.xack(self.stream, self.group, *[eid for eid, _ in entries])

    async def _refresh_backlog(self) -> None:
        """Pending (read, not acknowledged) plus not read yet; a warning as it grows."""
        self._last_refresh = time.monotonic()
        groups = await self.redis.xinfo_groups(self.stream)
        length = await self.redis.xlen(self.stream)
        for info in (group for group in groups if as_text(group.get("name")) == self.group):
            lag = info.get("lag")
            if lag is None:  # unknown after trimming: count what was not read yet at most
                read = info.get("entries-read")
                lag = max(0, length - int(read)) if read is not None else length
            self.state.pending, self.state.lag = int(info.get("pending") or 0), int(lag)
            self.state.backlog = self.state.pending + self.state.lag
        backlog, warnings = self.state.backlog, []
        self.metrics.access_log_backlog.labels(self.metrics.service).set(backlog)
        if backlog > self.backlog_warning:
            warnings.append(f"{backlog} access-log events wait to be written to ClickHouse "
                            f"(warning above {self.backlog_warning})")
        if backlog > self.stream_maxlen * 0.8:
            warnings.append(f"the access-log stream is near its cap of {self.stream_maxlen}: older events "
                            "will be trimmed before they are written")
        self.warnings = warnings
        if warnings and time.monotonic() - self._last_warning > 30:
            self._last_warning = time.monotonic()
            for text in warnings:
                log.warning("analytics: %s", text)

