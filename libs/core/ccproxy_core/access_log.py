"""Access-log events, one per client request, from the gateway to analytics through a Redis stream.
Emitting never waits and never fails: a bounded buffer is written to Redis in the background,
retried while Redis is away; only a full buffer drops (the oldest, counted and logged)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel

from ccproxy_core.forwarding import UNIFIED, header_number
from ccproxy_core.identity import ANONYMOUS
from ccproxy_core.models import TokenUsage

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ccproxy_core.forwarding import UpstreamReply
    from ccproxy_core.metrics import Metrics
    from ccproxy_core.settings import Settings

log = logging.getLogger(__name__)

EVENT_FIELD = "e"

Outcome = Literal["ok", "error", "cancelled"]

LINGER_SECONDS = 0.01
#: Cap on the embedded stream (``ccproxy serve``): ~25 MB, 20 consumer batches and the tail's replay.
EMBEDDED_STREAM_MAXLEN = 20_000


class AccessLogEvent(BaseModel):
    """One finished client request. Times are UTC; durations in milliseconds; the key never, only its id."""

    v: int = 1
    request_id: str
    started_at: datetime
    first_byte_at: datetime | None = None
    finished_at: datetime
    duration_ms: float
    #: To a stream's first content token; None for non-stream answers.
    ttft_ms: float | None = None
    mode: Literal["api", "sdk"] = "api"
    endpoint: str
    method: str = "POST"
    client_format: str = "anthropic"
    key_id: str = ANONYMOUS.id
    key_name: str = ""
    account: str = ""
    model_requested: str = ""
    model_used: str = ""
    stream: bool = False
    status: int
    outcome: Outcome = "ok"
    error_type: str = ""
    stop_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    sdk_cost_usd: float | None = None
    upstream_request_id: str = ""
    user_agent: str = ""
    client_addr: str = ""
    #: The subscription's quota from ``anthropic-ratelimit-unified-*``: 5-hour / 7-day use (0..1).
    quota_status: str = ""
    quota_5h_utilization: float | None = None
    quota_7d_utilization: float | None = None
    retry_after_s: float | None = None
    sdk_session_id: str = ""
    sdk_turns: int = 0
    sdk_tool_uses: int = 0
    permissions_requested: int = 0
    permissions_approved: int = 0
    permissions_denied: int = 0

    def to_stream(self) -> dict[str, bytes]:
        return {EVENT_FIELD: orjson.dumps(self.model_dump(mode="json"))}

    @classmethod
    def from_stream(cls, fields: dict[Any, Any]) -> AccessLogEvent:
        raw = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD))
        if raw is None:
            raise ValueError("stream entry has no event field")
        return cls.model_validate(orjson.loads(raw))


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class RequestLog:
    """One request's log while it is served: routes fill in :attr:`draft` through
    ``request.state.access_log``; times, status and outcome are set when the request is over."""

    def __init__(self, endpoint: str, *, request_id: str | None = None, **fields: Any) -> None:
        self.wall_start = time.time()
        self.started = time.perf_counter()
        self.first_byte: float | None = None
        self.first_token: float | None = None
        start = _utc(self.wall_start)
        self.draft = AccessLogEvent(
            request_id=request_id or f"req_{uuid.uuid4().hex}", started_at=start, finished_at=start,
            duration_ms=0.0, endpoint=endpoint, status=0, **fields,
        )
        self.sink: Callable[[AccessLogEvent], None] | None = None
        self.finished = False
        self._holds = 0
        self._closed = False
        self._outcome: Outcome | None = None

    def mark_first_byte(self) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()

    def set_identity(self, key_id: str, key_name: str = "") -> None:
        self.draft.key_id, self.draft.key_name = key_id, key_name

    def set_error(self, status: int, error_type: str) -> None:
        """499: the client went away first."""
        self.draft.status, self.draft.error_type = status, error_type

    def set_status(self, status: int) -> None:
        """A cancelled request stays cancelled (499)."""
        if self.draft.status != 499:
            self.draft.status = status

    def hold(self) -> None:
        """A stream's relay outlives the response: the event waits for its release, to carry its usage."""
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        self._emit_when_done()

    def close(self, outcome: Outcome | None = None) -> None:
        """The response is over; emit once nothing holds it. ``outcome`` overrides the status's."""
        self._closed = True
        self._outcome = outcome
        self._emit_when_done()

    def _emit_when_done(self) -> None:
        if self.finished or not self._closed or self._holds > 0:
            return
        self.finished = True
        if self.sink is not None:
            self.sink(self.event(self._outcome))

    def note_upstream(self, reply: UpstreamReply) -> None:
        d, headers = self.draft, reply.headers
        d.account = reply.account or d.account
        d.upstream_request_id = headers.get("request-id", d.upstream_request_id)
        d.quota_status = headers.get(UNIFIED + "status", d.quota_status)
        d.quota_5h_utilization = header_number(headers.get(UNIFIED + "5h-utilization"))
        d.quota_7d_utilization = header_number(headers.get(UNIFIED + "7d-utilization"))
        if reply.status in (429, 529):
            d.retry_after_s = header_number(headers.get("retry-after"))

    def set_usage(self, usage: TokenUsage, cost: float | None = None, stop_reason: str | None = None) -> None:
        d = self.draft
        d.model_used = usage.model or d.model_used
        d.input_tokens, d.output_tokens = usage.input_tokens, usage.output_tokens
        d.cache_read_tokens, d.cache_write_tokens = usage.cache_read_tokens, usage.cache_write_tokens
        d.cost_usd = usage.cost() if cost is None else cost
        d.stop_reason = stop_reason or d.stop_reason

    def event(self, outcome: Outcome | None = None) -> AccessLogEvent:
        end = time.perf_counter()
        d = self.draft
        d.status = d.status or 500
        if outcome is None and d.status == 499:
            outcome = "cancelled"
        d.outcome = outcome or ("ok" if d.status < 400 and not d.error_type else "error")
        if self.first_byte is not None:
            d.first_byte_at = _utc(self.wall_start + self.first_byte - self.started)
        d.finished_at = _utc(self.wall_start + end - self.started)
        d.duration_ms = round((end - self.started) * 1000, 3)
        if self.first_token is not None:
            d.ttft_ms = round((self.first_token - self.started) * 1000, 3)
        return d


class AccessLogEmitter:
    """Fire-and-forget delivery to a Redis stream; with no Redis (a gateway alone) events are only counted."""

    def __init__(
        self, redis: Redis | None, stream: str, maxlen: int = 1_000_000, buffer_size: int = 10_000,
        metrics: Metrics | None = None, batch: int = 500,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.maxlen = maxlen
        self.batch = batch
        self.metrics = metrics
        self._buffer: collections.deque[AccessLogEvent] = collections.deque()
        self._inflight = 0
        self._buffer_size = buffer_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self._last_drop_warning = 0.0
        self._redis_down_since: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis, metrics: Metrics | None = None) -> AccessLogEmitter:
        a = settings.analytics
        maxlen = a.stream_maxlen
        if settings.redis.url is None:
            # In this process's memory, 1M events grew `ccproxy serve` to ~1.3 GB (docs/performance.md).
            maxlen = min(maxlen, EMBEDDED_STREAM_MAXLEN)
        return cls(redis, settings.redis.key_prefix + a.stream, maxlen, a.buffer_size, metrics)

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._inflight

    def emit(self, event: AccessLogEvent) -> None:
        """Never blocks, never raises."""
        try:
            self._count("emitted")
            if self.redis is None:
                return
            if len(self._buffer) >= self._buffer_size:
                self._drop_oldest(self._buffer_size - 1)
                now = time.monotonic()
                if now - self._last_drop_warning > 10:
                    self._last_drop_warning = now
                    log.warning("access log: Redis unreachable and %d events buffered; dropping the oldest "
                                "(%d dropped so far)", self._buffer_size, self.dropped)
            self._buffer.append(event)
            self._gauge()
            self._ensure_task()
            self._wake.set()
        except Exception:  # emitting must never fail the request
            log.exception("access log: could not queue an event")

    def _drop_oldest(self, keep: int) -> None:
        while len(self._buffer) > keep:
            self._buffer.popleft()
            self.dropped += 1
            self._count("dropped")

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next emit in one starts the task
                self._task = asyncio.get_running_loop().create_task(self._run(), name="access-log-emitter")

    def _count(self, outcome: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.access_log_events.labels(self.metrics.service, outcome).inc(n)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.access_log_buffered.labels(self.metrics.service).set(len(self._buffer))

    async def _run(self) -> None:
        delay = 0.05
        while self._buffer or not self._closing:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._buffer) < self.batch and not self._closing:
                # Batching the next few ms' events: ~45 us an event on the embedded Redis, not ~80.
                await asyncio.sleep(LINGER_SECONDS)
            try:
                await self._send_some()
                delay = 0.05
                if self._redis_down_since is not None:
                    log.info("access log: Redis reachable again after %.0f s; %d events buffered",
                             time.monotonic() - self._redis_down_since, len(self._buffer))
                    self._redis_down_since = None
            except Exception as exc:
                if self._redis_down_since is None:
                    self._redis_down_since = time.monotonic()
                    log.warning("access log: cannot write to Redis (%s); buffering events", type(exc).__name__)
                if self._closing:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _send_some(self) -> None:
        assert self.redis is not None
        events = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
        self._inflight = len(events)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for event in events:
                pipe.xadd(self.stream, event.to_stream(), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()
        except BaseException:
            # Back to the front, in order (a retry may write one twice: analytics deduplicates).
            self._buffer.extendleft(reversed(events))
            self._drop_oldest(self._buffer_size)
            raise
        finally:
            self._inflight = 0
            self._gauge()
        self._count("sent", len(events))

    async def flush(self, within: float = 5.0) -> bool:
        """True once every event is in Redis, False if ``within`` seconds pass first."""
        deadline = time.monotonic() + within
        while self.buffered and time.monotonic() < deadline:
            self._ensure_task()
            self._wake.set()
            await asyncio.sleep(LINGER_SECONDS)
        return not self.buffered

    async def aclose(self, within: float = 5.0) -> None:
        if self.redis is not None and self.buffered and not await self.flush(within):
            log.warning("access log: %d events not sent at shutdown", self.buffered)
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def parse_time(value: str) -> datetime:
    """ISO 8601 or epoch seconds, as UTC; ValueError also for 1e20 or inf."""
    try:
        seconds = float(value)
    except ValueError:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    try:
        return _utc(seconds)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"{value!r} is out of range") from exc
