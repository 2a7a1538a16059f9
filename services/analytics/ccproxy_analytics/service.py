"""The analytics service: the consumer, the store and the log API (``/logs/*``).

``ccproxy run analytics`` serves :func:`create_service_app`; ``ccproxy serve`` mounts the same routes in the
gateway, on the embedded Redis and chDB. An admin sees every key's requests, any other caller its own key's."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ccproxy_analytics.consumer import AccessLogConsumer, parse_entry
from ccproxy_analytics.queries import Filters, encode_cursor, logs_query, parse_limit, usage_query
from ccproxy_analytics.store import ClickHouse, ClickHouseUnavailable
from ccproxy_core.access_log import AccessLogEvent
from ccproxy_core.errors import ProxyError, anthropic_error_body
from ccproxy_core.identity import ClosedMount, caller, caller_middleware, key_backend
from ccproxy_core.internal import require_internal_secret
from ccproxy_core.lifespan import closing, lifespan, running
from ccproxy_core.metrics import Metrics
from ccproxy_core.redis import Redis, as_text, connect, error_handlers
from ccproxy_core.settings import Settings
from ccproxy_core.sse import encode_event

log = logging.getLogger(__name__)


def json(body: Any) -> Response:
    """Datetimes in UTC with a ``Z`` (chDB's naive ones too), and chDB's numpy numbers."""
    options = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY
    return Response(orjson.dumps(body, option=options), media_type="application/json")


class Analytics:
    """The consumer writing the stream to ClickHouse, and the routes reading both. Callers are
    resolved by the app's backend (the gateway's in serve, key_backend in the stack)."""

    keepalive_seconds = 15.0

    def __init__(self, settings: Settings, redis: Redis, metrics: Metrics | None = None) -> None:
        a = settings.analytics
        self.metrics = metrics or Metrics("analytics").guarded(settings.security.metrics_token)
        self.redis = redis
        self.stream = settings.redis.key_prefix + a.stream
        if not settings.clickhouse.url:  # a server, or an explicit chdb:// path; else chDB under the data dir
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        dsn = settings.clickhouse.url or f"chdb://{(settings.data_dir / 'clickhouse').resolve()}"
        self.store = ClickHouse(dsn, settings.clickhouse.database, a.retention_days)
        self.consumer = AccessLogConsumer(
            redis, self.store, self.stream, group=a.group, batch_size=a.batch_size, batch_seconds=a.batch_seconds,
            backlog_warning=a.backlog_warning, stream_maxlen=a.stream_maxlen, metrics=self.metrics,
        )

    async def start(self) -> None:
        """Connecting to ClickHouse and migrating happen in the consumer's task, not here."""
        self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.store.aclose()

    def routes(self) -> list[BaseRoute]:
        handlers = {"query": self.query, "usage": self.usage, "status": self.status, "stream": self.stream_events}
        return [Route(f"/logs/{name}", handler, methods=["GET"]) for name, handler in handlers.items()]

    def filters(self, request: Request) -> Filters:
        """The query's filters; a caller who is not an admin gets its own key's requests only."""
        viewer = caller(request)  # the app's backend resolved it; anonymous never gets here
        filters = Filters.from_query(dict(request.query_params))
        if not viewer.admin:
            if filters.key is not None and filters.key != viewer.id:
                raise ProxyError(403, "you may only see your own key's requests", "permission_error")
            filters.key = viewer.id
        return filters

    async def query(self, request: Request) -> Response:
        filters = self.filters(request)
        limit = parse_limit(request.query_params.get("limit"))
        sql, params = logs_query(self.store.table, filters, limit, request.query_params.get("cursor"))
        rows = await self._rows(sql, params)
        cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return json({"data": rows[:limit], "has_more": cursor is not None, "next_cursor": cursor})

    async def usage(self, request: Request) -> Response:
        filters = self.filters(request)
        group_by = [g for g in request.query_params.get("group_by", "key,model").split(",") if g and g != "none"]
        bucket = request.query_params.get("bucket", "none")
        rows = await self._rows(*usage_query(self.store.table, filters, group_by, bucket))
        return json({"data": rows, "group_by": group_by, "bucket": bucket,
                     "since": filters.since, "until": filters.until})

    async def _rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return await self.store.query(sql, params)
        except ClickHouseUnavailable as exc:
            # The database's own text stays in the log: it can name tables, users and hosts.
            log.warning("access-log query failed: %s", exc)
            raise ProxyError(503, "the access log is unavailable right now; try again shortly",
                             headers={"retry-after": "5"}) from exc

    async def status(self, request: Request) -> Response:
        """The admin sees the pipeline (stream length, consumer counters, every row); a member whether
        the log works and how many of the rows are its own."""
        viewer = caller(request)
        body: dict[str, Any] = {"backend": self.store.backend, "database": self.store.database}
        warnings: list[str] = []
        where, params = ("", {}) if viewer.admin else (" WHERE key_id = {key:String}", {"key": viewer.id})
        try:
            async with asyncio.timeout(5):
                rows = await self.store.query(f"SELECT count() AS rows FROM {self.store.table}{where}", params)  # noqa: S608
            body["clickhouse"] = {"available": True, "rows_stored": rows[0]["rows"]}
        except (ClickHouseUnavailable, TimeoutError) as exc:
            body["clickhouse"] = {"available": False, "detail": str(exc) or "timed out"}
            warnings.append("ClickHouse is unreachable: events wait in Redis until it is back")
        try:
            length = await self.redis.xlen(self.stream)
            body["redis"] = {"available": True, "stream_length": length} if viewer.admin else {"available": True}
        except RedisError as exc:
            body["redis"] = {"available": False, "detail": type(exc).__name__}
            warnings.append("Redis is unreachable: gateways buffer events in memory")
        if viewer.admin:
            body["consumer"] = {"name": self.consumer.consumer, "group": self.consumer.group,
                                **asdict(self.consumer.state)}
            warnings.extend(self.consumer.warnings)
        return json({**body, "warnings": warnings, "status": "degraded" if warnings else "ok"})

    async def stream_events(self, request: Request) -> Response:
        """Reads the Redis stream directly (``XREAD``): requests show as the gateways finish them."""
        filters = self.filters(request)
        raw_replay = request.query_params.get("replay", "")
        replay = min(int(raw_replay), 500) if raw_replay.isascii() and raw_replay.isdigit() else 0
        return StreamingResponse(self._events(filters.matches, replay), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def _events(self, wanted: Callable[[AccessLogEvent], bool], replay: int) -> AsyncIterator[bytes]:
        """The last ``replay`` entries, then every new one; a keepalive comment when quiet."""
        yield b": connected\n\n"
        last, entries, quiet_since = "0-0", [], time.monotonic()
        try:
            newest = await self.redis.xrevrange(self.stream, count=max(replay, 1))
            last = as_text(newest[0][0]) if newest else last
            entries = list(reversed(newest)) if replay else []
        except RedisError as exc:
            yield _redis_down(exc)
        while True:
            for eid, fields in entries:
                last = as_text(eid)
                event = parse_entry(eid, fields)
                if event is not None and wanted(event):
                    quiet_since = time.monotonic()
                    yield encode_event("request", orjson.dumps(event.model_dump(mode="json")))
            if time.monotonic() - quiet_since > self.keepalive_seconds:
                quiet_since = time.monotonic()
                yield b": keepalive\n\n"
            try:
                resp = await self.redis.xread({self.stream: last}, count=200, block=1000)
                entries = [entry for _stream, found in resp or [] for entry in found]
            except RedisError as exc:
                entries = []
                yield _redis_down(exc)
                await asyncio.sleep(2)


def _redis_down(exc: RedisError) -> bytes:
    return encode_event("error", orjson.dumps({"detail": f"Redis unavailable: {type(exc).__name__}"}))


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    analytics = Analytics(settings, connect(settings.redis))  # one Redis client for the consumer and the API

    async def health(request: Request) -> Response:
        try:
            await analytics.redis.ping()
            redis: dict[str, Any] = {"available": True}
        except Exception as exc:
            redis = {"available": False, "detail": type(exc).__name__}
        checks = {"redis": redis, "clickhouse": {"available": analytics.consumer.clickhouse_ok is not False}}
        return json({"status": "ok", "service": "analytics", "ready": redis["available"], "checks": checks})

    def render(request: Request, exc: ProxyError) -> Response:
        return Response(anthropic_error_body(exc.error_type, exc.message), exc.status, exc.headers, "application/json")

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]),
                Route("/metrics", analytics.metrics.endpoint, methods=["GET"]),
                ClosedMount("/logs", analytics.routes())],  # a caller is needed unless a route is public(...)
        exception_handlers=error_handlers(render),
        lifespan=lifespan(closing(analytics.redis.aclose), running(analytics.start, analytics.stop)),
        middleware=[caller_middleware(key_backend(settings, secret))],
    )
    app.router.redirect_slashes = False  # a redirect's absolute location would echo the Host header
    return app
