"""Internal service-to-service calls: ``/internal`` paths need ``SECURITY__INTERNAL_SECRET`` in one
header, and ccproxy's own errors are marked (``x-ccproxy-error``) apart from the upstream's."""

from __future__ import annotations

import contextlib
import hmac
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ccproxy_core.errors import ProxyError, anthropic_error_body, parse_anthropic_error
from ccproxy_core.logging import register_secret
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings
from ccproxy_core.tokens import STATUS_PATH, CredentialStatus

INTERNAL_REFUSED = "internal call refused: missing or wrong SECURITY__INTERNAL_SECRET"

INTERNAL_SECRET_HEADER = "x-ccproxy-internal-secret"
PROXY_ERROR_HEADER = "x-ccproxy-error"
INTERNAL_PREFIX = "/internal"


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
        self._secret = secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = "/" + scope.get("path", "").lstrip("/")  # "//internal/..." is internal too
        if scope["type"] == "http" and (path == INTERNAL_PREFIX or path.startswith(INTERNAL_PREFIX + "/")):
            presented = Headers(scope=scope).get(INTERNAL_SECRET_HEADER, "")
            if not hmac.compare_digest(self._secret, presented.encode()):
                await internal_error(ProxyError(403, INTERNAL_REFUSED, "permission_error"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AuthServiceHttp(InternalClient):
    """Auth's own errors raised as the ProxyError they carry, transport failures as a 503."""

    timeout = 10.0

    def __init__(self, base_url: str, internal_secret: str) -> None:
        super().__init__(base_url, internal_secret, timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=3))

    async def _post(self, path: str, body: BaseModel | dict[str, Any]) -> dict[str, Any]:
        payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
        return await self._call("POST", path, orjson.dumps(payload))

    async def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        headers = {"content-type": "application/json"} if body is not None else {}
        try:
            async with self._client().request(method, self._base_url + path, data=body, headers=headers) as resp:
                raw = await resp.read()
                status, ours = resp.status, PROXY_ERROR_HEADER in resp.headers
                retry_after = resp.headers.get("retry-after")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ProxyError(503, f"the auth service is unreachable ({type(exc).__name__}); retry shortly",
                             headers={"retry-after": "2"}) from exc
        if status == 200:
            with contextlib.suppress(orjson.JSONDecodeError):
                data = orjson.loads(raw)
                if isinstance(data, dict):
                    return data
            raise ProxyError(502, "the auth service answered something that is not a JSON object")
        parsed = parse_anthropic_error(raw) if ours else None
        if parsed is None:
            raise ProxyError(502, f"the auth service answered {status}")
        error_type, message = parsed
        if status == 403 and message == INTERNAL_REFUSED:  # our own secret: a deployment mistake, not the client's
            raise ProxyError(502, f"the auth service refused this service: {message}")
        raise ProxyError(status, message, error_type, headers={"retry-after": retry_after} if retry_after else None)


class AuthClient(AuthServiceHttp):
    """The credentials' status; tokens in :class:`ccproxy_core.routing.RoutingAuthClient`."""

    #: Long enough for auth to wait on another replica's refresh (lock ttl) and do its own.
    timeout = 90.0

    async def status(self) -> CredentialStatus:
        try:
            return CredentialStatus.model_validate(await self._call("GET", STATUS_PATH))
        except ProxyError as exc:
            return CredentialStatus(available=False, detail=exc.message)
