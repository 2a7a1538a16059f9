"""A client API route, declared once: its format, whether it costs money, whether it is logged. The
error handlers, the access log and metering read the matched route (``scope["route"]``) instead of
lists of paths, so a new endpoint is one line in a route list (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Scope

from ccproxy_core.errors import ClientFormat, path_format

#: What the access log calls the format a route speaks (``AccessLogEvent.client_format``).
SpokenFormat = Literal["anthropic", "openai-chat", "openai-responses"]


class ApiRoute(Route):
    def __init__(
        self, path: str, endpoint: Callable[..., Any], *, methods: list[str], client_format: SpokenFormat = "anthropic",
        metered: bool = False, logged: bool = True,
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


def api_route(scope: Scope) -> ApiRoute | None:
    """The matched (or, for a 405, partly matched) route, if it is a client API route."""
    route = scope.get("route")
    return route if isinstance(route, ApiRoute) else None


def error_format(scope: Scope) -> ClientFormat:
    """The matched route's; for no route (a 404), the path's."""
    route = api_route(scope)
    return route.error_format if route is not None else path_format(scope.get("path", ""))


def metered(request: Request) -> bool:
    route = api_route(request.scope)
    return route is not None and route.metered
