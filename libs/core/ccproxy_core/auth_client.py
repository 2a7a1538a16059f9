"""The services' HTTP client of the auth service's ``/internal`` API."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel

from ccproxy_core.errors import ProxyError, parse_anthropic_error
from ccproxy_core.internal import INTERNAL_REFUSED, PROXY_ERROR_HEADER, InternalClient
from ccproxy_core.tokens import CredentialStatus

STATUS_PATH = "/internal/status"


class AuthServiceHttp(InternalClient):
    """Pooled keep-alive calls with the internal secret: auth's own errors raised as the ProxyError
    they carry, transport failures as a 503. Shared by the token, pool and client-key clients."""

    #: Seconds for one call.
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
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ProxyError(502, "the auth service answered something that is not JSON") from exc
            if not isinstance(data, dict):
                raise ProxyError(502, "the auth service answered something that is not an object")
            return data
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
