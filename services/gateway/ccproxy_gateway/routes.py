"""A client API route, declared once: the format it speaks, whether it costs money, whether it is
in the access log.

Everything that used to keep its own list of paths reads the matched route instead
(``scope["route"]``, set by Starlette's router): the error handlers render in
:func:`error_format`, the access log (:mod:`ccproxy_gateway.access`) records the route's template,
mode and format, and API-mode forwards are metered when the route says ``metered``. So a new
endpoint is one line in a route list::

    ApiRoute("/api/v1/widgets", widgets, methods=["POST"], client_format="anthropic", metered=True)

Metrics labels come from the same matched route (:func:`ccproxy_core.metrics.route_label`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ccproxy_core.errors import ClientFormat, path_format

#: What the access log calls the format a route speaks (``AccessLogEvent.client_format``).
SpokenFormat = Literal["anthropic", "openai-chat", "openai-responses"]

#: Where ApiRoute.handle leaves the access-log draft's fields for AccessLogMiddleware.
PENDING_LOG = "access_log_pending"


class ApiRoute(Route):
    """A Starlette ``Route`` carrying what the gateway needs to know about it (module docstring)."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: list[str],
        client_format: SpokenFormat = "anthropic",
        metered: bool = False,
        logged: bool = True,
    ) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.client_format: SpokenFormat = client_format
        #: Errors in the client's own format: OpenAI's for both OpenAI APIs.
        self.error_format: ClientFormat = "anthropic" if client_format == "anthropic" else "openai"
        #: An API-mode forward from this route is admitted and settled by the key's limits.
        self.metered = metered
        #: One access-log event per request (HEAD and OPTIONS never are).
        self.logged = logged
        self.mode: Literal["api", "sdk"] = "sdk" if path.startswith("/sdk") else "api"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Also reached for a 405 (a partial match): that request is logged under this route too.
        if self.logged and scope["type"] == "http":
            log = scope.get("state", {}).get(PENDING_LOG)
            if log is not None:
                log.draft.endpoint, log.draft.mode, log.draft.client_format = self.path, self.mode, self.client_format
                scope["state"]["access_log"] = log
        await super().handle(scope, receive, send)


def api_route(scope: Scope) -> ApiRoute | None:
    """The matched (or, for a 405, partly matched) route, if it is a client API route."""
    route = scope.get("route")
    return route if isinstance(route, ApiRoute) else None


def error_format(scope: Scope) -> ClientFormat:
    """The format of an error answer: the matched route's; for no route (a 404), the path's."""
    route = api_route(scope)
    return route.error_format if route is not None else path_format(scope.get("path", ""))


def metered(request: Request) -> bool:
    route = api_route(request.scope)
    return route is not None and route.metered
