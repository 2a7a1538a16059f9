"""The auth service on its own (``ccproxy run auth``): the account pool and client keys over
internal HTTP (:mod:`ccproxy_auth.admin`), ``/internal/status`` and the orchestrator's ``/health``
and ``/metrics``; Traefik routes ``/admin`` and ``/me`` here too (:mod:`ccproxy_auth.console`).
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ccproxy_auth.admin import internal_routes, local_accounts, web_routes
from ccproxy_core.errors import ProxyError
from ccproxy_core.internal import RequireInternalSecret, internal_error, json_response, require_internal_secret
from ccproxy_core.lifespan import closing, lifespan
from ccproxy_core.metrics import Metrics, route_label
from ccproxy_core.redis import REDIS_DOWN, UNAVAILABLE, connect, unavailable_error
from ccproxy_core.settings import Settings
from ccproxy_core.tokens import STATUS_PATH

log = logging.getLogger(__name__)


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    # This process's one Redis client (the embedded stand-in unless REDIS__URL): pool state, keys.
    redis = connect(settings.redis)
    metrics = Metrics("auth").guarded(settings.security.metrics_token)
    # Named accounts (or the CLI login when there are none) and client keys: docs/accounts.md.
    manager, keys = local_accounts(settings, redis, metrics)

    async def status(request: Request) -> Response:
        return json_response((await manager.status()).model_dump())

    async def health(request: Request) -> Response:
        creds = await manager.status()
        checks: dict[str, object] = {"credentials": creds.model_dump(exclude_none=True)}
        ready = creds.available
        if settings.redis.url:
            try:
                await redis.ping()
                checks["redis"] = {"available": True}
            except UNAVAILABLE as exc:
                checks["redis"] = {"available": False, "detail": type(exc).__name__}
                ready = False
        return json_response({"status": "ok", "service": "auth", "ready": ready, "checks": checks})

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):  # no such route or method (an admin client's typo): JSON too
            return internal_error(ProxyError(exc.status_code, str(exc.detail)))
        # Redis down (refresh lock, account state, key limits): a clear 503, not a 500.
        error = exc if isinstance(exc, ProxyError) else unavailable_error(exc)
        metrics.requests.labels(metrics.service, route_label(request.scope), str(error.status)).inc()
        if error.status >= 500:
            log.warning("%s -> %d %s", request.url.path, error.status, error.message)
        return internal_error(error)

    app = Starlette(
        routes=[
            Route(STATUS_PATH, status, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            *internal_routes(manager, keys),
            *web_routes(settings, manager, keys),  # /admin (console + API) and /me
        ],
        middleware=[Middleware(RequireInternalSecret, secret=secret)],
        exception_handlers=dict.fromkeys((ProxyError, HTTPException, *REDIS_DOWN), on_error),
        lifespan=lifespan(closing(redis.aclose)),
    )
    app.router.redirect_slashes = False  # a redirect's absolute location would echo the Host header
    return app
