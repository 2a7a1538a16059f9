"""The log API: ``/logs/query``, ``/logs/usage``, ``/logs/status``, ``/logs/stream``.

Who may see what follows client authentication: an admin (the holder of
``SECURITY__AUTH_TOKEN``, or everyone when client auth is off) sees every key's requests; any
other caller sees only its own key's (its ``key`` filter is forced to its key id). The stream
reads the Redis stream directly (``XREAD``), so it shows requests as the gateways finish them,
before they reach ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ccproxy_analytics.consumer import AccessLogConsumer
from ccproxy_analytics.queries import Filters, logs_query, page, parse_limit, usage_query
from ccproxy_analytics.store import ClickHouse, ClickHouseUnavailable
from ccproxy_core.access_log import AccessLogEvent
from ccproxy_core.errors import ProxyError
from ccproxy_core.identity import caller
from ccproxy_core.redis import as_text
from ccproxy_core.sse import encode_event

log = logging.getLogger(__name__)

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY


def json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=JSON_OPTIONS), status_code=status, media_type="application/json")


class LogsApi:
    def __init__(
        self,
        store: ClickHouse,
        redis: Redis,
        stream: str,
        consumer: AccessLogConsumer | None = None,
        keepalive_seconds: float = 15.0,
    ) -> None:
        self.store = store
        self.redis = redis
        self.stream = stream
        self.consumer = consumer
        self.keepalive_seconds = keepalive_seconds

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/logs/query", self.query, methods=["GET"]),
            Route("/logs/usage", self.usage, methods=["GET"]),
            Route("/logs/status", self.status, methods=["GET"]),
            Route("/logs/stream", self.stream_events, methods=["GET"]),
        ]

    async def filters(self, request: Request) -> Filters:
        viewer = caller(request)  # the app's backend resolved it; anonymous never gets here
        filters = Filters.from_query(dict(request.query_params))
        if not viewer.admin:
            if filters.key is not None and filters.key != viewer.id:
                raise ProxyError(403, "you may only see your own key's requests", "permission_error")
            filters.key = viewer.id
        return filters

    async def query(self, request: Request) -> Response:
        filters = await self.filters(request)
        limit = parse_limit(request.query_params.get("limit"))
        sql, params = logs_query(self.store.table, filters, limit, request.query_params.get("cursor"))
        rows = await self._rows(sql, params)
        result = page(rows, limit)
        return json({"data": result.rows, "has_more": result.next_cursor is not None,
                     "next_cursor": result.next_cursor})

    async def usage(self, request: Request) -> Response:
        filters = await self.filters(request)
        raw = request.query_params.get("group_by")
        group_by = [g for g in (raw if raw is not None else "key,model").split(",") if g and g != "none"]
        bucket = request.query_params.get("bucket", "none")
        sql, params = usage_query(self.store.table, filters, group_by, bucket)
        rows = await self._rows(sql, params)
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
        """The admin sees the pipeline (stream length, consumer counters, every stored row); a
        member sees whether the log works and how many of the stored rows are its own."""
        viewer = caller(request)  # the app's backend resolved it; anonymous never gets here
        body: dict[str, Any] = {"backend": self.store.backend, "database": self.store.database}
        warnings: list[str] = []
        try:
            async with asyncio.timeout(5):
                sql = f"SELECT count() AS rows FROM {self.store.table}"  # noqa: S608 (a checked identifier)
                params: dict[str, Any] = {}
                if not viewer.admin:
                    sql += " WHERE key_id = {key:String}"
                    params["key"] = viewer.id
                rows = await self.store.query(sql, params)
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
        if viewer.admin and self.consumer is not None:
            st = self.consumer.state
            body["consumer"] = {
                "name": self.consumer.consumer, "group": self.consumer.group,
                "inserted": st.inserted, "invalid": st.invalid, "batches": st.batches,
                "last_insert_at": st.last_insert_at, "backlog": st.backlog, "pending": st.pending,
                "lag": st.lag,
            }
            warnings.extend(st.warnings)
        body["warnings"] = warnings
        body["status"] = "ok" if not warnings else "degraded"
        return json(body)

    async def stream_events(self, request: Request) -> Response:
        filters = await self.filters(request)
        q = request.query_params

        raw_replay = q.get("replay", "")
        replay = min(int(raw_replay), 500) if raw_replay.isascii() and raw_replay.isdigit() else 0
        return StreamingResponse(
            self._events(filters.matches, replay),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _events(self, wanted: Callable[[AccessLogEvent], bool], replay: int) -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        last = "0-0"
        try:
            newest = await self.redis.xrevrange(self.stream, count=max(replay, 1))
            if newest:
                last = as_text(newest[0][0])
                for eid, fields in reversed(newest if replay else []):
                    event = _parse(eid, fields)
                    if event is not None and wanted(event):
                        yield _frame(event)
        except RedisError as exc:
            yield encode_event("error", orjson.dumps({"detail": f"Redis unavailable: {type(exc).__name__}"}))
        quiet_since = time.monotonic()
        while True:
            try:
                resp = await self.redis.xread({self.stream: last}, count=200, block=1000)
            except RedisError as exc:
                yield encode_event("error", orjson.dumps({"detail": f"Redis unavailable: {type(exc).__name__}"}))
                await asyncio.sleep(2)
                continue
            for _stream, entries in resp or []:
                for eid, fields in entries:
                    last = as_text(eid)
                    event = _parse(eid, fields)
                    if event is not None and wanted(event):
                        quiet_since = time.monotonic()
                        yield _frame(event)
            if time.monotonic() - quiet_since > self.keepalive_seconds:
                quiet_since = time.monotonic()
                yield b": keepalive\n\n"


def _parse(eid: Any, fields: Any) -> AccessLogEvent | None:
    if fields is None:
        return None
    try:
        return AccessLogEvent.from_stream(fields)
    except ValueError:
        log.debug("skipping malformed stream entry %s", as_text(eid))
        return None


def _frame(event: AccessLogEvent) -> bytes:
    return encode_event("request", orjson.dumps(event.model_dump(mode="json")))
