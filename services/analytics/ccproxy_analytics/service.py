"""Wiring: the consumer, the store and the log API from settings, in the stack or embedded.

``ccproxy run analytics`` consumes the stream and serves :func:`create_service_app`: ``/logs/*``
(client keys checked as in the permissions service), ``/health`` and ``/metrics``. ``ccproxy serve``
builds the same :class:`Analytics` on the embedded Redis and chDB and mounts its routes in the gateway.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ccproxy_analytics.api import LogsApi, json
from ccproxy_analytics.consumer import AccessLogConsumer
from ccproxy_analytics.store import ClickHouse
from ccproxy_core.errors import ProxyError, render_error
from ccproxy_core.identity import ClosedMount, caller_middleware, key_backend
from ccproxy_core.internal import require_internal_secret
from ccproxy_core.lifespan import closing, lifespan, running
from ccproxy_core.metrics import Metrics
from ccproxy_core.redis import Redis, connect
from ccproxy_core.settings import Settings


def clickhouse_dsn(settings: Settings) -> str:
    """``CLICKHOUSE__URL`` (a server, or an explicit ``chdb://`` path), else chDB under the data dir."""
    if settings.clickhouse.url:
        return settings.clickhouse.url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return f"chdb://{(settings.data_dir / 'clickhouse').resolve()}"


class Analytics:
    def __init__(self, settings: Settings, redis: Redis, metrics: Metrics | None = None) -> None:
        a = settings.analytics
        self.metrics = metrics or Metrics("analytics").guarded(settings.security.metrics_token)
        self.redis = redis
        self.store = ClickHouse(clickhouse_dsn(settings), settings.clickhouse.database, a.retention_days)
        self.consumer = AccessLogConsumer(
            redis, self.store, settings.redis.key_prefix + a.stream, group=a.group, batch_size=a.batch_size,
            batch_seconds=a.batch_seconds, backlog_warning=a.backlog_warning, stream_maxlen=a.stream_maxlen,
            metrics=self.metrics,
        )
        # Callers are resolved by the app's backend (the gateway's in serve, key_backend here).
        self.api = LogsApi(self.consumer)

    def routes(self) -> list[BaseRoute]:
        return self.api.routes()

    async def start(self) -> None:
        """Connecting to ClickHouse and migrating happen in the consumer's task, not here."""
        self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.store.aclose()


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    # This process's one Redis client: the stream consumed, the log API's reads.
    analytics = Analytics(settings, connect(settings.redis))

    async def health(request: Request) -> Response:
        try:
            await analytics.redis.ping()
            redis: dict[str, Any] = {"available": True}
        except Exception as exc:
            redis = {"available": False, "detail": type(exc).__name__}
        checks = {"redis": redis, "clickhouse": {"available": analytics.consumer.state.clickhouse_ok is not False}}
        return json({"status": "ok", "service": "analytics", "ready": redis["available"], "checks": checks})

    async def on_proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return Response(render_error(exc, "anthropic"), status_code=exc.status,
                        media_type="application/json", headers=exc.headers)

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", analytics.metrics.endpoint, methods=["GET"]),
        ClosedMount("/logs", analytics.routes()),  # a caller is needed unless a route is public(...)
    ]
    app = Starlette(
        routes=routes, exception_handlers={ProxyError: on_proxy_error},
        lifespan=lifespan(closing(analytics.redis.aclose), running(analytics.start, analytics.stop)),
        middleware=[caller_middleware(key_backend(settings, secret))],
    )
    app.router.redirect_slashes = False  # a redirect's absolute location would echo the Host header
    return app
