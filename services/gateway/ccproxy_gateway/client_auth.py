"""Client authentication: one shared token (``SECURITY__AUTH_TOKEN``), sent as ``x-api-key``
or ``Authorization: Bearer``, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from ccproxy_core.errors import ProxyError


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return None


class ClientAuth:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, request: Request) -> None:
        """Raise 401 unless the request carries the token; name the caller on its access log
        (``local`` with client auth off, ``admin`` for the token's holder; never the key)."""
        access = getattr(request.state, "access_log", None)
        if self._token is None:
            if access is not None:
                access.set_identity("local", "local")
            return
        key = presented_key(request)
        if key is None:
            raise ProxyError(401, "missing client key: send it as x-api-key or Authorization: Bearer")
        if not hmac.compare_digest(key.encode(), self._token):
            raise ProxyError(401, "invalid client key")
        if access is not None:
            access.set_identity("admin", "admin")
