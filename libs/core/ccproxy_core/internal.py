"""Internal service-to-service calls: ``/internal`` paths need ``SECURITY__INTERNAL_SECRET`` in one
header, and ccproxy's own errors are marked (``x-ccproxy-error``) apart from the upstream's."""

from __future__ import annotations

import hmac
from typing import Any

import aiohttp
import orjson
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ccproxy_core.errors import ProxyError, anthropic_error_body
from ccproxy_core.logging import register_secret
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings

INTERNAL_REFUSED = "internal call refused: missing or wrong SECURITY__INTERNAL_SECRET"

INTERNAL_SECRET_HEADER = "x-ccproxy-internal-secret"
PROXY_ERROR_HEADER = "x-ccproxy-error"
INTERNAL_PREFIX = "/internal"


def check_internal_secret(expected: str | None, presented: str | None) -> bool:
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def internal_error(exc: ProxyError) -> Response:
    headers = {PROXY_ERROR_HEADER: "1", **exc.headers}
    body = anthropic_error_body(exc.error_type, exc.message)
    return Response(body, status_code=exc.status, media_type="application/json", headers=headers)


def require_internal_secret(settings: Settings) -> str:
    """The configured secret; a service never runs with none or a guessable one."""
    secret = settings.security.internal_secret
    if secret is None or not secret.get_secret_value():
        raise StartupError(
            "SECURITY__INTERNAL_SECRET is not set: the stack's services need a shared secret for "
            "their internal calls. `ccproxy up` makes one per run; for compose, `make env` writes "
            "one into .env (or set it to the output of `ccproxy generate-token`)."
        )
    value = secret.get_secret_value()
    if len(value) < 16:
        raise StartupError("SECURITY__INTERNAL_SECRET is too short: use at least 16 random characters")
    register_secret(value)
    return value


class InternalClient:
    """A client of another service: one keep-alive session with the internal secret on every
    request, opened in the running loop on first use (and again if closed)."""

    def __init__(self, base_url: str, secret: str, **session: Any) -> None:
        self._base_url = base_url.rstrip("/")
        self._options = {"headers": {INTERNAL_SECRET_HEADER: secret}, **session}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector, **self._options)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def json_response(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


class RequireInternalSecret:

    def __init__(self, app: ASGIApp, secret: str) -> None:
        if not secret:
            raise ValueError("an internal secret is required")
        self.app = app
        self._secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_internal(scope.get("path", "")):
            if not check_internal_secret(self._secret, Headers(scope=scope).get(INTERNAL_SECRET_HEADER)):
                refused = ProxyError(403, INTERNAL_REFUSED, "permission_error")
                await internal_error(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_internal(path: str) -> bool:
    path = "/" + path.lstrip("/")  # "//internal/..." is internal too
    return path == INTERNAL_PREFIX or path.startswith(INTERNAL_PREFIX + "/")
