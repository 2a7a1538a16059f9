"""``ccproxy run api-forwarder``: ``/internal/forward/v1/...`` serves :class:`ccproxy_core.forwarding.HttpForwarder`.
Our own errors (no token, upstream unreachable) are marked ``x-ccproxy-error`` for the gateway to
render in the client's format; an upstream error is relayed as sent."""

from __future__ import annotations

import logging
import time

import orjson
from prometheus_client import Gauge
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ccproxy_core.client_keys import KeyInfo
from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import FORWARD_KEY_HEADER, ForwardRequest
from ccproxy_core.internal import RequireInternalSecret, internal_error, json_response, require_internal_secret
from ccproxy_core.lifespan import closing, lifespan
from ccproxy_core.metrics import Metrics
from ccproxy_core.redis import error_handlers
from ccproxy_core.routing import RoutingAuthClient
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings
from ccproxy_core.streaming import RelayResponse, relay, until_disconnect
from ccproxy_forwarder.forwarder import ApiForwarder

log = logging.getLogger(__name__)

#: Upstream paths a forward may target: the Messages API, nothing else of the upstream's.
ALLOWED_PREFIX = "/v1/"
ROUTE = "/internal/forward"


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    if not settings.services.auth_url:
        raise StartupError("SERVICES__AUTH_URL is not set: the api-forwarder gets its tokens from auth")
    tokens = RoutingAuthClient(settings.services.auth_url, secret)
    forwarder = ApiForwarder(settings.anthropic, tokens)
    metrics = Metrics("api-forwarder").guarded(settings.security.metrics_token)
    Gauge(
        "ccproxy_auth_token_fetches", "Tokens fetched from the auth service (the rest came from the cache)",
        registry=metrics.registry,
    ).set_function(lambda: tokens.fetches)

    async def forward(request: Request) -> Response:
        started = time.perf_counter()
        path = "/" + request.path_params["path"].lstrip("/")
        if not path.startswith(ALLOWED_PREFIX) or "/../" in path:
            raise ProxyError(404, f"no upstream path {path}", "not_found_error")
        raw_key = request.headers.get(FORWARD_KEY_HEADER)  # the caller's key, as the gateway resolved it
        try:
            body = orjson.loads(await request.body()) if request.method == "POST" else {}
            key = KeyInfo.model_validate_json(raw_key) if raw_key else None
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise ProxyError(400, f"the forwarded body or {FORWARD_KEY_HEADER} is malformed") from exc
        if not isinstance(body, dict):
            raise ProxyError(400, "the forwarded body is not a JSON object")
        query = request.scope.get("query_string", b"").decode()
        # The headers as they came: upstream_headers drops ours (x-ccproxy-*) and the hop-by-hop ones.
        forward = ForwardRequest(path=path, headers=dict(request.headers), body=body, query=query,
                                 method=request.method, key=key)
        reply = await until_disconnect(request, forwarder.forward(forward), "the gateway hung up")
        metrics.upstream.labels(metrics.service, str(reply.status), reply.account or "").inc()
        headers = dict(reply.headers)
        if reply.account:
            headers["x-ccproxy-account"] = reply.account

        async def end(first_byte: float | None) -> None:
            await reply.aclose()
            metrics.answered(ROUTE, reply.status, started, first_byte)

        if not reply.is_stream:
            # A plain response: a streamed one costs a task group per request (docs/performance.md).
            content = await until_disconnect(request, reply.read(), "the gateway hung up")
            await end(time.perf_counter() - started)
            return Response(content, status_code=reply.status, headers=headers)
        return RelayResponse(relay(reply, started, end), status_code=reply.status, headers=headers)

    async def health(request: Request) -> Response:
        creds = await tokens.status()
        checks = {"auth": creds.model_dump(exclude_none=True)}
        return json_response({"status": "ok", "service": "api-forwarder", "ready": creds.available, "checks": checks})

    def on_error(request: Request, exc: ProxyError) -> Response:
        metrics.requests.labels(metrics.service, ROUTE, str(exc.status)).inc()
        if exc.status >= 500:
            log.warning("%s -> %d %s", request.url.path, exc.status, exc.message)
        return internal_error(exc)

    return Starlette(
        routes=[
            Route(ROUTE + "{path:path}", forward, methods=["POST", "GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(RequireInternalSecret, secret=secret)],
        exception_handlers=error_handlers(on_error),
        lifespan=lifespan(closing(tokens.aclose), closing(forwarder.aclose)),
    )
