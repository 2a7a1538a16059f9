"""The permissions service: ``ccproxy run permissions`` (Redis required) and the routes ``ccproxy serve``
mounts. Public (under ``/permissions``, client key required when auth is on): the SSE ``stream``, the
listing, one request, ``respond`` and the ``ui`` page. Internal (shared secret, never routed by Traefik):
the worker's create, wait, cancel. Redis down is the app's error handlers' 503
(:func:`ccproxy_core.redis.error_handlers`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ccproxy_core.errors import ProxyError, anthropic_error_body, validation_error
from ccproxy_core.identity import Caller, caller, caller_middleware, guard_routes, key_backend, public
from ccproxy_core.internal import RequireInternalSecret, require_internal_secret
from ccproxy_core.lifespan import closing, lifespan, running
from ccproxy_core.metrics import Metrics
from ccproxy_core.permissions import PermissionAsk, PermissionResponse, PermissionView
from ccproxy_core.redis import connect, error_handlers
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings
from ccproxy_core.sse import encode_event
from ccproxy_permissions.broker import REQUEST, AlreadyDecided, PermissionBroker, visible

Model = TypeVar("Model", bound=BaseModel)

#: A stream whose client cannot keep up is told to resync rather than buffering without bound.
STREAM_QUEUE = 1000


def found(view: PermissionView | None, request_id: str) -> Response:
    if view is None:
        raise ProxyError(404, f"no permission request {request_id}")
    return Response(view.model_dump_json(), media_type="application/json")


async def parsed(model: type[Model], request: Request) -> Model:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc) from exc


class PermissionsApi:
    def __init__(self, broker: PermissionBroker) -> None:
        self.broker = broker

    async def visible_view(self, request: Request) -> tuple[Caller, PermissionView]:
        identity = caller(request)
        request_id = request.path_params["request_id"]
        view = await self.broker.store.get(request_id)
        if view is None or not visible(identity, view):
            raise ProxyError(404, f"no permission request {request_id}")
        return identity, view

    async def get(self, request: Request) -> Response:
        _, view = await self.visible_view(request)
        return Response(view.model_dump_json(), media_type="application/json")

    async def listing(self, request: Request) -> Response:
        identity = caller(request)
        pending = [v.model_dump(mode="json") for v in await self.broker.store.pending() if visible(identity, v)]
        return Response(orjson.dumps({"data": pending}), media_type="application/json")

    async def respond(self, request: Request) -> Response:
        identity, view = await self.visible_view(request)
        response = await parsed(PermissionResponse, request)
        try:
            decided = await self.broker.respond(view, response, identity)
        except AlreadyDecided as exc:
            body = orjson.loads(anthropic_error_body("invalid_request_error", str(exc)))
            body["permission"] = exc.view.model_dump(mode="json")
            return JSONResponse(body, status_code=409)
        return found(decided, view.id)

    async def stream(self, request: Request) -> Response:
        identity = caller(request)
        broker = self.broker
        queue: asyncio.Queue[tuple[str, PermissionView] | None] = asyncio.Queue(STREAM_QUEUE)

        def listener(item: tuple[str, PermissionView] | None) -> None:
            if item is not None and not visible(identity, item[1]):
                return
            if queue.full():
                while not queue.empty():
                    queue.get_nowait()
                item = None
            queue.put_nowait(item)

        async def pending_events() -> AsyncIterator[bytes]:
            for view in await broker.store.pending():
                if visible(identity, view):
                    yield encode_event(REQUEST, view.model_dump_json())

        async def body() -> AsyncIterator[bytes]:
            # Listen before the replay: a request made meanwhile comes twice (clients key by id), never zero times.
            with broker.listen(listener):
                yield b": connected\n\n"
                async for frame in pending_events():
                    yield frame
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), broker.settings.permissions.keepalive_seconds)
                    except TimeoutError:
                        yield encode_event("ping", orjson.dumps({"time": time.time()}))
                        continue
                    if item is None:  # missed events: replay what is pending
                        async for frame in pending_events():
                            yield frame
                    else:
                        yield encode_event(item[0], item[1].model_dump_json())

        await broker.store.redis.ping()  # Redis down: a 503 now, not a stream that breaks
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    async def ui(self, request: Request) -> Response:
        page = resources.files("ccproxy_permissions").joinpath("ui.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def internal_create(self, request: Request) -> Response:
        ask = await parsed(PermissionAsk, request)
        view = await self.broker.create(ask)
        return found(view, view.id)

    async def internal_wait(self, request: Request) -> Response:
        try:
            seconds = min(max(float(request.query_params.get("timeout", "20")), 0.0), 60.0)
        except ValueError as exc:
            raise ProxyError(400, "timeout: a number of seconds") from exc
        request_id = request.path_params["request_id"]
        return found(await self.broker.wait(request_id, seconds), request_id)

    async def internal_cancel(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        return found(await self.broker.cancel(request_id), request_id)


def routes(broker: PermissionBroker, internal: bool = True) -> list[BaseRoute]:
    """The public routes (and the worker's internal ones). ``ccproxy serve`` mounts the public ones only:
    its worker asks the broker itself (a :class:`~ccproxy_core.permissions.PermissionGate`)."""
    api = PermissionsApi(broker)
    served: list[BaseRoute] = [
        Route("/permissions", api.listing, methods=["GET"]),
        Route("/permissions/stream", api.stream, methods=["GET"]),
        public(Route("/permissions/ui", api.ui, methods=["GET"])),  # the page asks for the key
        Route("/permissions/{request_id}", api.get, methods=["GET"]),
        Route("/permissions/{request_id}/respond", api.respond, methods=["POST"]),
    ]
    if internal:
        served += [
            Route("/internal/permissions", api.internal_create, methods=["POST"]),
            Route("/internal/permissions/{request_id}/wait", api.internal_wait, methods=["GET"]),
            Route("/internal/permissions/{request_id}/cancel", api.internal_cancel, methods=["POST"]),
        ]
    return served


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
            *routes(broker),
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
