"""Client authentication: the shared token (``SECURITY__AUTH_TOKEN``) and per-member client keys,
sent as ``x-api-key`` or ``Authorization: Bearer``.

Resolving a key may need Redis or the auth service, so it happens once per request in the
:class:`~ccproxy_gateway.metering.KeyGuard` middleware; :meth:`ClientAuth.check`, which routes
call, only reads the result. Client auth is on when the shared token is set or any client key
exists; then a request without a valid one is refused with 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.requests import Request

from ccproxy_core.client_keys import KeyAuthority, Principal, looks_like_key
from ccproxy_core.errors import ProxyError

#: Where the key guard leaves its verdict in the ASGI scope.
PRINCIPAL_SCOPE = "ccproxy.principal"
AUTH_ERROR_SCOPE = "ccproxy.auth_error"


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return None


def key_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """:func:`presented_key` over raw ASGI headers (for middleware)."""
    api_key = bearer = None
    for name, value in headers:
        if name == b"x-api-key" and value:
            api_key = value.decode("latin-1")
        elif name == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                bearer = rest.strip()
    return api_key or bearer


class ClientAuth:
    def __init__(self, token: str | None, keys: KeyAuthority | None = None) -> None:
        self._token = token.encode() if token else None
        self.keys = keys
        #: Whether client keys exist (refreshed by :meth:`resolve`, cached by ``keys``).
        self._keys_active = False

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._keys_active

    async def resolve(self, key: str | None) -> Principal | None:
        """Who ``key`` belongs to; None if nobody (refused later if auth is on)."""
        if self.keys is not None:
            self._keys_active = await self.keys.any_keys()
        if key is None:
            return None
        if self._token is not None and hmac.compare_digest(key.encode(), self._token):
            return Principal(key_id="default", key_name="shared token")
        if self.keys is None or (not self._keys_active and not looks_like_key(key)):
            return None
        # A key-shaped string is looked up even while "no keys exist" is cached: a key made a
        # moment ago must work on its first request (the cache keeps only what was found).
        found = await self.keys.lookup(key)
        if found is None:
            return None
        self._keys_active = True
        return Principal(key_id=found.id, key_name=found.name, key=found)

    def check(self, request: Request) -> None:
        error = request.scope.get(AUTH_ERROR_SCOPE)
        if isinstance(error, ProxyError):
            raise error
        if request.scope.get(PRINCIPAL_SCOPE) is not None:
            return
        if PRINCIPAL_SCOPE not in request.scope and self.keys is None and self._token is not None:
            # No key guard in front (an app built without one): the shared token alone.
            key = presented_key(request)
            if key is not None and hmac.compare_digest(key.encode(), self._token):
                return
        if not self.enabled:
            return
        if presented_key(request) is None:
            raise ProxyError(401, "missing client key: send it as x-api-key or Authorization: Bearer")
        raise ProxyError(401, "invalid client key")
