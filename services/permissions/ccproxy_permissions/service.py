"""``ccproxy run permissions``: Redis required, the internal API behind the shared secret."""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ccproxy_core.errors import ProxyError, anthropic_error_body
from ccproxy_core.identity import caller_middleware, guard_routes, key_backend
from ccproxy_core.internal import RequireInternalSecret, require_internal_secret
from ccproxy_core.lifespan import closing, lifespan, running
from ccproxy_core.metrics import Metrics
from ccproxy_core.redis import connect, error_handlers
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings
from ccproxy_permissions.app import PermissionsApi, routes
from ccproxy_permissions.broker import PermissionBroker


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    if not settings.redis.url:
        raise StartupError(
            "REDIS__URL is not set: permission requests live in Redis so every replica and the "
            "sdk-workers share them (for everything in one process, use `ccproxy serve`)"
        )
    redis = connect(settings.redis)  # this process's one client
    broker = PermissionBroker(settings, redis)
    metrics = Metrics("permissions").guarded(settings.security.metrics_token)

    async def health(request: Request) -> Response:
        await redis.ping()  # Redis down: the error handlers' 503
        return JSONResponse({"status": "ok", "service": "permissions"})

    async def scrape(request: Request) -> Response:
        with contextlib.suppress(Exception):  # Redis down: the last value stays
            metrics.permissions_pending.labels(metrics.service).set(len(await broker.store.pending()))
        return await metrics.endpoint(request)

    def proxy_error(request: Request, exc: ProxyError) -> Response:
        return Response(anthropic_error_body(exc.error_type, exc.message), status_code=exc.status,
                        media_type="application/json", headers=exc.headers)

    app = Starlette(
        routes=guard_routes([
            *routes(PermissionsApi(broker)),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", scrape, methods=["GET"]),
        ]),
        middleware=[caller_middleware(key_backend(settings, secret))],
        exception_handlers=error_handlers(proxy_error),
        lifespan=lifespan(closing(redis.aclose), running(broker.start, broker.stop)),
    )
    app.router.redirect_slashes = False  # a redirect's absolute location would echo the Host header
    app.add_middleware(RequireInternalSecret, secret=secret)
    return app
