"""The log API at the gateway: who may read which requests, and the relay to analytics.

The gateway owns client authentication, so it decides who is asking: with client auth off,
everyone is the local admin; the holder of ``SECURITY__AUTH_TOKEN`` is the admin and sees every
key's requests; a member's key sees only its own. In ``ccproxy serve`` the log API runs in this
process and asks :func:`log_viewer`; in the stack :class:`LogsRelay` passes ``/logs/*`` to the
analytics service's internal endpoints with the viewer in headers, streams included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ccproxy_core.access_log import viewer_headers
from ccproxy_core.client_keys import current_principal
from ccproxy_core.errors import ProxyError
from ccproxy_core.identity import ADMIN_IDENTITY, LOCAL_IDENTITY, ClientIdentity
from ccproxy_core.internal import INTERNAL_SECRET_HEADER, PROXY_ERROR_HEADER
from ccproxy_gateway.client_auth import ClientAuth

LOG_ENDPOINTS = ("query", "usage", "status", "stream")
Viewer = Callable[[Request], Awaitable[ClientIdentity]]


def log_viewer(client_auth: ClientAuth) -> Viewer:
    async def viewer(request: Request) -> ClientIdentity:
        client_auth.check(request)  # 401 without a valid key
        if not client_auth.enabled:
            return LOCAL_IDENTITY
        principal = current_principal.get()
        if principal is None or principal.key_id == ADMIN_IDENTITY.id:
            return ADMIN_IDENTITY
        return ClientIdentity(id=principal.key_id, name=principal.key_name, admin=False)

    return viewer


class LogsRelay:
    """``GET /logs/{name}`` -> ``{analytics}/internal/logs/{name}``, answers relayed as they come."""

    def __init__(self, base_url: str, internal_secret: str, viewer: Viewer) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = internal_secret
        self.viewer = viewer
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> list[BaseRoute]:
        return [Route("/logs/{name}", self.relay, methods=["GET"])]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None),
                auto_decompress=False,
            )
        return self._session

    async def relay(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in LOG_ENDPOINTS:
            raise ProxyError(404, f"no log endpoint /logs/{name}; there are {', '.join(LOG_ENDPOINTS)}")
        who = await self.viewer(request)
        url = f"{self.base_url}/internal/logs/{name}"
        if request.url.query:
            url += "?" + request.url.query
        headers = {INTERNAL_SECRET_HEADER: self.secret, **viewer_headers(who)}
        try:
            resp = await self._client().get(url, headers=headers)
        except (aiohttp.ClientError, OSError) as exc:
            raise ProxyError(503, f"the analytics service is unreachable ({type(exc).__name__})",
                             headers={"retry-after": "5"}) from exc
        passed = {k: v for k, v in resp.headers.items()
                  if k.lower() in ("content-type", "cache-control", "retry-after", "x-accel-buffering")}
        if resp.headers.get("content-type", "").startswith("text/event-stream") and resp.status == 200:
            return StreamingResponse(_chunks(resp), status_code=resp.status, headers=passed)
        body = await resp.read()
        resp.release()
        passed.pop(PROXY_ERROR_HEADER, None)
        return Response(body, status_code=resp.status, headers=passed)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    finally:
        resp.close()
