"""The gateway's public API as a Starlette app: plain route functions over a :class:`Gateway`,
which holds what they share (settings, the forwarder, client auth, metrics, the access log)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ccproxy_core import pricing
from ccproxy_core.access_log import AccessLogEmitter
from ccproxy_core.client_keys import CachedKeys, KeyAuthority
from ccproxy_core.errors import ProxyError, parse_anthropic_error, render_error, upstream_error
from ccproxy_core.forwarding import Forwarder, ForwardRequest, UpstreamReply
from ccproxy_core.identity import ClosedMount, KeyBackend, RunTokens, caller, caller_middleware, guard_routes, public
from ccproxy_core.lifespan import Lifespan
from ccproxy_core.metrics import Metrics, route_label
from ccproxy_core.redis import REDIS_DOWN, Redis, unavailable_error
from ccproxy_core.settings import Settings
from ccproxy_core.sse import iter_events
from ccproxy_core.streaming import until_disconnect
from ccproxy_core.tokens import CredentialStatus
from ccproxy_gateway.access import AccessLogMiddleware, request_log
from ccproxy_gateway.body import read_json_object, validate_messages_request
from ccproxy_gateway.metering import KeyMeter, MeteredForwarder
from ccproxy_gateway.model_catalog import ModelCatalog
from ccproxy_gateway.openai.chat import CHAT
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.responses import RESPONSES, ResponsesPlan
from ccproxy_gateway.openai.stream import OpenAIFormat
from ccproxy_gateway.relay import Answers, client_headers
from ccproxy_gateway.response_store import Exchange, ResponseStore
from ccproxy_gateway.routes import ApiRoute, error_format, metered

log = logging.getLogger(__name__)

#: ``/dashboard``'s page (uPlot vendored: nothing to build): charts over ``/logs/*`` for ``ccproxy
#: serve``, which has no Grafana, with the key the user types.
STATIC = Path(__file__).parent / "static"


class Gateway:
    def __init__(
        self, settings: Settings, forwarder: Forwarder, credential_status: Callable[[], Awaitable[CredentialStatus]],
        metrics: Metrics | None = None, access_log: AccessLogEmitter | None = None, keys: KeyAuthority | None = None,
        redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        # What answers cost in the access log and metrics (auth settles keys at the same prices).
        pricing.configure(settings.pricing.overrides)
        #: The Responses API's store (``previous_response_id``, ``item_reference``) on the process's one
        #: Redis client (any replica continues any response); None without Redis.
        self.responses = (ResponseStore(redis, settings.responses, settings.redis.key_prefix) if redis is not None
                          else None)
        self.forwarder = forwarder
        self.credential_status = credential_status
        self.metrics = metrics or Metrics("gateway").guarded(settings.security.metrics_token)
        self.answers = Answers(self.metrics)
        # On the process's one Redis client; with neither, events are only counted.
        if access_log is None:
            access_log = (AccessLogEmitter.from_settings(settings, redis, self.metrics) if redis is not None
                          else AccessLogEmitter(None, "", metrics=self.metrics))
        self.access_log = access_log
        token = settings.security.auth_token
        if keys is not None and not isinstance(keys, CachedKeys):  # None: the shared token only
            # Lookups cached: revocation reaches every replica within SECURITY__KEY_CACHE_SECONDS.
            keys = CachedKeys(keys, settings.security.key_cache_seconds)
        runs = RunTokens(redis, settings.redis.key_prefix) if redis is not None else None  # SDK runs' own
        self.auth = KeyBackend(token.get_secret_value() if token else None, keys, runs)
        #: Admission and settlement of limited keys, for API mode (the forwarder) and SDK mode.
        self.meter = KeyMeter(keys) if keys is not None else None
        if self.meter is not None:
            self.forwarder = MeteredForwarder(forwarder, self.meter)
        self.model_map = ModelMap.from_settings(settings.models)
        self.catalog = ModelCatalog(self.forwarder, settings.anthropic.models_cache_seconds, self.model_map.aliases())

    async def models(self, request: Request) -> Response:
        query = request.scope.get("query_string", b"").decode()
        return JSONResponse(await self.catalog.listing(dict(request.headers), query, caller(request).key))

    async def read_body(self, request: Request) -> dict[str, Any]:
        return await read_json_object(request, self.settings.server.max_body_bytes)

    async def exchange(self, request: Request, fmt: OpenAIFormat, raw: dict[str, Any]) -> Exchange:
        """The request's plan, its stored conversation filled in (no store: the translation refuses references)."""
        req, turn, store = fmt.parse(raw), None, self.responses
        if fmt.stored and store is not None:
            req, turn = await store.prepare(caller(request).id, req)
        plan = fmt.translate(req, self.model_map, self.settings.openai)
        if turn is not None and isinstance(plan, ResponsesPlan):  # what the response says about storage
            plan.echo["store"] = turn.store
            plan.echo["previous_response_id"] = turn.previous
        return Exchange(fmt, plan, partial(store.save, turn) if store is not None and turn is not None else None)

    async def forward(
        self, request: Request, path: str, headers: dict[str, str], body: dict[str, Any], model: str, stream: bool,
        query: str = "",
    ) -> UpstreamReply:
        """One upstream forward for every API-mode route, until the client goes away, with what it
        asked for and who answered on the access log and metrics."""
        access = request_log(request)
        if access is not None:
            access.draft.model_requested = model
            access.draft.stream = stream
        forward = ForwardRequest(path=path, headers=headers, body=body, query=query, key=caller(request).key,
                                 metered=metered(request))
        reply: UpstreamReply = await until_disconnect(request, self.forwarder.forward(forward))
        self.metrics.upstream.labels(self.metrics.service, str(reply.status), reply.account or "").inc()
        if access is not None:
            access.note_upstream(reply)
        return reply

    async def forward_anthropic(self, request: Request, path: str) -> Response:
        started = time.perf_counter()
        body = await self.read_body(request)
        validate_messages_request(body, count_tokens=path.endswith("count_tokens"))
        query = request.scope.get("query_string", b"").decode()  # not request.url.query: ~10 µs per request
        reply = await self.forward(request, path, dict(request.headers), body, body["model"],
                                   body.get("stream") is True, query)
        if reply.is_stream and reply.status == 200:
            return self.answers.relay_upstream(request, started, reply)
        content, _, usage = await self.answers.read(request, reply)
        self.answers.record(request, reply.status, started, usage, time.perf_counter() - started)
        access = request_log(request)
        if access is not None and reply.status >= 400:
            access.draft.error_type = (parse_anthropic_error(content) or ("api_error", ""))[0]
        return Response(content, status_code=reply.status, headers=client_headers(reply))

    async def forward_openai(self, request: Request, fmt: OpenAIFormat) -> Response:
        """Chat Completions or Responses as a Messages forward; an upstream error keeps its status
        and ``retry-after`` but is rendered as OpenAI's (by the app's error handler)."""
        started = time.perf_counter()
        exchange = await self.exchange(request, fmt, await self.read_body(request))
        plan = exchange.plan
        # Only these client headers mean something upstream (betas such as 1M context).
        sent = {k: request.headers[k] for k in ("anthropic-beta", "anthropic-version") if k in request.headers}
        reply = await self.forward(request, "/v1/messages", sent, plan.body, plan.client_model, plan.stream)
        if reply.status != 200:
            raise upstream_error(reply.status, (await self.answers.read(request, reply))[0], reply.headers)
        headers = client_headers(reply)
        del headers["content-type"]
        if "request-id" in headers:
            headers["x-request-id"] = headers["request-id"]
        if plan.stream:
            frames, tr = exchange.stream(iter_events(reply))
            headers |= {"content-type": "text/event-stream", "cache-control": "no-cache"}
            return self.answers.relay_upstream(request, started, reply, frames, lambda: tr.usage, headers)
        _, message, usage = await self.answers.read(request, reply)
        self.answers.record(request, 200, started, usage, time.perf_counter() - started)
        if message is None:
            raise ProxyError(502, "the upstream's answer is not a JSON message")
        return JSONResponse(await exchange.answer(message), headers=headers)


async def preflight(request: Request) -> Response:
    """Older Claude Code versions send HEAD to the base URL before anything else."""
    return Response(status_code=200)


class HeadProbe(Route):
    """HEAD only, invisible to other methods: an unknown GET stays a 404, a wrong method a 405."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["method"] != "HEAD":
            return Match.NONE, {}
        return super().matches(scope)


def create_app(
    gateway: Gateway, extra_routes: list[BaseRoute] | None = None, lifespan: Lifespan | None = None
) -> Starlette:
    """``lifespan`` (:func:`ccproxy_core.lifespan.lifespan`): the parts the caller starts and stops."""
    messages = partial(gateway.forward_anthropic, path="/v1/messages")
    count_tokens = partial(gateway.forward_anthropic, path="/v1/messages/count_tokens")

    async def dashboard(request: Request) -> Response:
        return FileResponse(STATIC / "dashboard.html", headers={"cache-control": "no-cache"})

    async def status(request: Request) -> Response:
        creds = await gateway.credential_status()
        return JSONResponse({
            "status": "ok" if creds.available else "degraded", "mode": "api",
            "upstream": gateway.settings.anthropic.base_url, "credentials": creds.model_dump(exclude_none=True),
            "client_auth": gateway.auth.enabled,
        })

    async def health(request: Request) -> Response:
        creds = await gateway.credential_status()
        body: dict[str, Any] = {"status": "ok", "ready": creds.available}
        if caller(request).is_authenticated:  # liveness needs no key; the credentials' detail does
            body["checks"] = {"credentials": creds.model_dump(exclude_none=True)}
        return Response(orjson.dumps(body), media_type="application/json")

    async def on_error(request: Request, exc: Exception) -> Response:
        """Every error, counted, on the access log, and rendered in the format the client spoke."""
        route = route_label(request.scope)
        if isinstance(exc, ProxyError):
            error = exc
        elif isinstance(exc, HTTPException):
            error = ProxyError(exc.status_code, str(exc.detail))
        elif isinstance(exc, REDIS_DOWN):  # whatever needed Redis (key limits, account state, sessions)
            error = unavailable_error(exc)
        else:
            log.error("unhandled error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
            error = ProxyError(500, "internal error in ccproxy")
        if error.status >= 500:
            log.warning("%s %s -> %d %s", request.method, route, error.status, error.message)
        gateway.metrics.requests.labels(gateway.metrics.service, route, str(error.status)).inc()
        access = request_log(request)
        if access is not None:
            access.set_error(error.status, error.error_type)
        status = error.status if error.status != 499 else 400  # 499: the client went away, nobody reads it
        return Response(render_error(error, error_format(request.scope)), status, error.headers, "application/json")

    stored = gateway.responses  # one store for API and SDK mode (a session name in the path changes nothing)
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", gateway.metrics.endpoint, methods=["GET"]),
        # Everything under /api needs a caller: its mount closes each route unless it is public(...).
        ClosedMount("/api", [
            # Older Claude Code versions probe the base URL before sending a key.
            public(Route("/api", preflight, methods=["HEAD", "GET"])),
            public(Route("/api/", preflight, methods=["HEAD", "GET"])),
            # Client API routes: format, metering and the access log are declared here, once.
            ApiRoute("/api/v1/messages", messages, methods=["POST"], metered=True),
            ApiRoute("/api/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            ApiRoute("/api/v1/models", gateway.models, methods=["GET"]),
            Route("/api/models", gateway.models, methods=["GET"]),
            Route("/api/status", status, methods=["GET"]),
            ApiRoute("/api/v1/chat/completions", partial(gateway.forward_openai, fmt=CHAT), methods=["POST"],
                     client_format="openai-chat", metered=True),
            ApiRoute("/api/v1/responses", partial(gateway.forward_openai, fmt=RESPONSES), methods=["POST"],
                     client_format="openai-responses", metered=True),
            *(stored.routes(("/api/v1",)) if stored is not None else []),
        ]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/dashboard/", dashboard, methods=["GET"]),
        Mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static"),
        # The composition root's parts (SDK mode, permissions, logs) come in their closed mounts;
        # a plain route given under /api, /sdk, /permissions or /logs is put into its mount.
        *guard_routes(extra_routes or []),
        ClosedMount("/sdk", stored.routes(("/sdk/v1", "/sdk/{session_id}/v1")) if stored is not None else []),
        # Claude Code probes reachability with a HEAD under its base URL (e.g. `/api/api/hello`).
        ClosedMount("/api", [public(HeadProbe("/api/{rest:path}", preflight))]),
        ClosedMount("/sdk", [public(HeadProbe("/sdk/{rest:path}", preflight))]),
    ]
    app = Starlette(
        routes=routes,
        # Exception: a crash, or Redis failing in a middleware (outside the route's handlers).
        exception_handlers=dict.fromkeys((ProxyError, HTTPException, *REDIS_DOWN, Exception), on_error),
        middleware=[
            caller_middleware(gateway.auth),  # never refuses: the closed mounts do, by route
            Middleware(AccessLogMiddleware, emitter=gateway.access_log),
        ],
        lifespan=lifespan,
    )
    # No trailing-slash redirects: their absolute `location` would echo the client's Host header.
    app.router.redirect_slashes = False
    return app
