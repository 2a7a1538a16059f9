"""The permissions service's HTTP API: the public approval endpoints and the worker's internal ones.

Public (routed by Traefik under ``/permissions``, client key required when auth is on):
``GET /permissions/stream`` (SSE), ``GET /permissions``, ``GET /permissions/{id}``,
``POST /permissions/{id}/respond``, ``GET /permissions/ui``. Internal (shared secret, never
routed): ``POST /internal/permissions``, ``GET /internal/permissions/{id}/wait``,
``POST /internal/permissions/{id}/cancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ccproxy_core.errors import ProxyError, anthropic_error_body
from ccproxy_core.identity import Caller, KeyBackend, caller, caller_middleware, guard_routes, public
from ccproxy_core.internal import INTERNAL_SECRET_HEADER, check_internal_secret
from ccproxy_core.lifespan import Part, lifespan, running
from ccproxy_core.metrics import Metrics
from ccproxy_core.permissions import PermissionAsk, PermissionResponse, PermissionView
from ccproxy_core.redis import unavailable_as_503
from ccproxy_core.sse import encode_event
from ccproxy_permissions.broker import AlreadyDecided, PermissionBroker, visible
from ccproxy_permissions.store import REQUEST

log = logging.getLogger(__name__)

#: A stream whose client cannot keep up is told to resync rather than buffering without bound.
STREAM_QUEUE = 1000


def view_json(view: PermissionView) -> bytes:
    return orjson.dumps(view.model_dump(mode="json"))


def found(view: PermissionView | None, request_id: str) -> Response:
    """The request as JSON; 404 if there is none (or none this caller may see)."""
    if view is None:
        raise ProxyError(404, f"no permission request {request_id}")
    return Response(view_json(view), media_type="application/json")


class PermissionsApi:
    def __init__(self, broker: PermissionBroker) -> None:
        self.broker = broker
        secret = broker.settings.security.internal_secret
        self._internal_secret = secret.get_secret_value() if secret else None

    def check_internal(self, request: Request) -> None:
        if not check_internal_secret(self._internal_secret, request.headers.get(INTERNAL_SECRET_HEADER)):
            raise ProxyError(
                403, "internal call refused: missing or wrong SECURITY__INTERNAL_SECRET", "permission_error"
            )

    async def visible_view(self, request: Request) -> tuple[Caller, PermissionView]:
        identity = caller(request)
        request_id = request.path_params["request_id"]
        async with unavailable_as_503("permission requests"):
            view = await self.broker.store.get(request_id)
        if view is None or not visible(identity, view):
            raise ProxyError(404, f"no permission request {request_id}")
        return identity, view

    # -- public ---------------------------------------------------------------------------------

    async def get(self, request: Request) -> Response:
        _, view = await self.visible_view(request)
        return found(view, view.id)

    async def listing(self, request: Request) -> Response:
        identity = caller(request)
        async with unavailable_as_503("permission requests"):
            pending = [v for v in await self.broker.store.pending() if visible(identity, v)]
        return Response(
            orjson.dumps({"data": [v.model_dump(mode="json") for v in pending]}), media_type="application/json"
        )

    async def respond(self, request: Request) -> Response:
        identity, view = await self.visible_view(request)
        try:
            response = PermissionResponse.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ProxyError(400, f"{where}: {first['msg']}") from exc
        try:
            async with unavailable_as_503("permission requests"):
                decided = await self.broker.respond(view.id, response, identity)
        except AlreadyDecided as exc:
            body = orjson.loads(anthropic_error_body("invalid_request_error", str(exc)))
            body["permission"] = exc.view.model_dump(mode="json")
            return JSONResponse(body, status_code=409)
        return found(decided, view.id)

    async def stream(self, request: Request) -> Response:
        identity = caller(request)
        queue: asyncio.Queue[tuple[str, PermissionView] | None] = asyncio.Queue(STREAM_QUEUE)

        def listener(item: tuple[str, PermissionView] | None) -> None:
            if item is not None and not visible(identity, item[1]):
                return
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
                queue.put_nowait(None)

        keepalive = self.broker.settings.permissions.keepalive_seconds
        broker = self.broker

        async def pending_events() -> AsyncIterator[bytes]:
            for view in await broker.store.pending():
                if visible(identity, view):
                    yield encode_event(REQUEST, view_json(view))

        async def body() -> AsyncIterator[bytes]:
            with broker.hub.listen(listener):
                # Listening before the replay: a request made meanwhile comes twice, never zero
                # times (clients key requests by id).
                yield b": connected\n\n"
                async for frame in pending_events():
                    yield frame
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), keepalive)
                    except TimeoutError:
                        yield encode_event("ping", orjson.dumps({"time": time.time()}))
                        continue
                    if item is None:
                        async for frame in pending_events():
                            yield frame
                        continue
                    event, view = item
                    yield encode_event(event, view_json(view))

        async with unavailable_as_503("the permission stream"):
            await broker.store.redis.ping()
        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def ui(self, request: Request) -> Response:
        page = resources.files("ccproxy_permissions").joinpath("ui.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    # -- internal (the sdk-worker) --------------------------------------------------------------

    async def internal_create(self, request: Request) -> Response:
        self.check_internal(request)
        try:
            ask = PermissionAsk.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ProxyError(400, f"invalid permission request: {exc.errors()[0]['msg']}") from exc
        async with unavailable_as_503("permission requests"):
            view = await self.broker.create(ask)
        return found(view, view.id)

    async def internal_wait(self, request: Request) -> Response:
        self.check_internal(request)
        try:
            seconds = min(max(float(request.query_params.get("timeout", "20")), 0.0), 60.0)
        except ValueError as exc:
            raise ProxyError(400, "timeout: a number of seconds") from exc
        request_id = request.path_params["request_id"]
        async with unavailable_as_503("permission requests"):
            view = await self.broker.wait(request_id, seconds)
        return found(view, request_id)

    async def internal_cancel(self, request: Request) -> Response:
        self.check_internal(request)
        request_id = request.path_params["request_id"]
        async with unavailable_as_503("permission requests"):
            view = await self.broker.cancel(request_id)
        return found(view, request_id)

    async def health(self, request: Request) -> Response:
        async with unavailable_as_503("the permissions service"):
            await self.broker.store.redis.ping()
        return JSONResponse({"status": "ok", "service": "permissions"})


def routes(api: PermissionsApi, internal: bool = True) -> list[BaseRoute]:
    """The public routes (and the worker's internal ones), for this service's app or another's."""
    client_routes: list[BaseRoute] = [
        Route("/permissions", api.listing, methods=["GET"]),
        Route("/permissions/stream", api.stream, methods=["GET"]),
        public(Route("/permissions/ui", api.ui, methods=["GET"])),  # the page asks for the key
        Route("/permissions/{request_id}", api.get, methods=["GET"]),
        Route("/permissions/{request_id}/respond", api.respond, methods=["POST"]),
    ]
    if not internal:
        return client_routes
    return [
        *client_routes,
        Route("/internal/permissions", api.internal_create, methods=["POST"]),
        Route("/internal/permissions/{request_id}/wait", api.internal_wait, methods=["GET"]),
        Route("/internal/permissions/{request_id}/cancel", api.internal_cancel, methods=["POST"]),
    ]


async def proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return Response(
        anthropic_error_body(exc.error_type, exc.message),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def create_app(broker: PermissionBroker, backend: KeyBackend, parts: Sequence[Part] = (),
               metrics_token: object | None = None) -> Starlette:
    """The service on its own (``ccproxy run permissions``): callers resolved by ``backend``;
    ``parts`` start before the broker and stop after it (its Redis client)."""
    api = PermissionsApi(broker)
    metrics = Metrics("permissions").guarded(metrics_token)

    async def scrape(request: Request) -> Response:
        with contextlib.suppress(Exception):  # Redis down: the last value stays
            metrics.permissions_pending.labels(metrics.service).set(len(await broker.store.pending()))
        return await metrics.endpoint(request)

    app = Starlette(
        routes=guard_routes([
            *routes(api),
            Route("/health", api.health, methods=["GET"]),
            Route("/metrics", scrape, methods=["GET"]),
        ]),
        middleware=[caller_middleware(backend)],
        exception_handlers={ProxyError: proxy_error},
        lifespan=lifespan(*parts, running(broker.start, broker.stop)),
    )
    app.router.redirect_slashes = False  # a redirect's absolute location would echo the Host header
    return app
