"""The forwarder's (and gateway's) client of the auth service: a :class:`TokenSource` over HTTP.

A token is cached until shortly before it expires, so the hot path makes no call to auth at all;
concurrent callers that find it stale wait for one request, not one each. A token the upstream
refused (401) is sent back as ``rejected``: auth refreshes it (single-flight across replicas)
unless someone already has, and either way answers with the token to use now.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from ccproxy_core.errors import ProxyError, parse_anthropic_error
from ccproxy_core.internal import INTERNAL_REFUSED, INTERNAL_SECRET_HEADER, PROXY_ERROR_HEADER
from ccproxy_core.logging import register_secret
from ccproxy_core.tokens import Credential, CredentialStatus

TOKEN_PATH = "/internal/token"
STATUS_PATH = "/internal/status"


class AuthServiceHttp:
    """Calls to the auth service's ``/internal`` API over pooled keep-alive HTTP, shared by its
    clients (tokens here, client keys in ccproxy_core.client_keys): the secret in every request,
    auth's own errors raised as the ProxyError they carry, transport failures as a 503."""

    def __init__(self, base_url: str, internal_secret: str, timeout: float) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {INTERNAL_SECRET_HEADER: internal_secret}
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=3)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), timeout=self._timeout
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        headers = dict(self._headers)
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            async with self._client().request(
                method, self._base_url + path, data=body, headers=headers
            ) as resp:
                raw = await resp.read()
                status, ours = resp.status, PROXY_ERROR_HEADER in resp.headers
                retry_after = resp.headers.get("retry-after")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ProxyError(
                503, f"the auth service is unreachable ({type(exc).__name__}); retry shortly",
                headers={"retry-after": "2"},
            ) from exc
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
        raise ProxyError(
            status, message, error_type, headers={"retry-after": retry_after} if retry_after else None
        )


class AuthClient(AuthServiceHttp):
    def __init__(
        self,
        base_url: str,
        internal_secret: str,
        *,
        margin_seconds: float = 60.0,
        timeout: float = 90.0,
    ) -> None:
        # Long enough for auth to wait on another replica's refresh (lock ttl) and do its own.
        super().__init__(base_url, internal_secret, timeout)
        self._margin = margin_seconds
        self._cached: Credential | None = None
        self._lock = asyncio.Lock()
        #: Calls made to auth for a token (tests check the cache really caches).
        self.fetches = 0

    def _fresh(self, credential: Credential | None, rejected: str | None) -> bool:
        if credential is None:
            return False
        if rejected is not None and credential.secret.get_secret_value() == rejected:
            return False
        return not credential.expires_within(self._margin)

    async def get(self, *, rejected: str | None = None) -> Credential:
        if self._fresh(self._cached, rejected):
            assert self._cached is not None
            return self._cached
        async with self._lock:
            # Another caller may have fetched a new token while this one waited.
            if self._fresh(self._cached, rejected):
                assert self._cached is not None
                return self._cached
            body = orjson.dumps({"rejected": rejected}) if rejected else b"{}"
            data = await self._call("POST", TOKEN_PATH, body)
            self.fetches += 1
            credential = Credential.model_validate(data)
            register_secret(credential.secret.get_secret_value())
            self._cached = credential
            return credential

    async def status(self) -> CredentialStatus:
        try:
            return CredentialStatus.model_validate(await self._call("GET", STATUS_PATH))
        except ProxyError as exc:
            return CredentialStatus(available=False, detail=exc.message)

    async def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        try:
            return await super()._call(method, path, body)
        except ProxyError as exc:
            if exc.status == 403 and exc.message == INTERNAL_REFUSED:
                # Our own secret was refused: a deployment mistake, not the client's.
                raise ProxyError(502, f"the auth service refused this service: {exc.message}") from None
            raise
