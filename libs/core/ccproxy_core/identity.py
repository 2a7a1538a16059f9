"""Who is calling: the client key behind a request, as an id, a name and an admin flag.

Permission requests belong to the key that made the run; a member sees and decides only its
own, an admin sees all. Services ask one question, :meth:`KeyResolver.identify`, so they work
the same with the single ``SECURITY__AUTH_TOKEN`` (that token is the admin) and with per-member
keys (the auth service's key store answers the same question).
"""

from __future__ import annotations

import hmac
from typing import Protocol

from pydantic import BaseModel
from starlette.requests import Request

from ccproxy_core.client_keys import ANONYMOUS, SHARED_TOKEN, CachedKeys, HttpKeyAuthority
from ccproxy_core.settings import Settings


class ClientIdentity(BaseModel):
    #: Stable id of the key (never the key itself: ids travel in jobs, events and logs).
    id: str
    #: Human-readable name, shown to approvers ("who asked").
    name: str
    admin: bool = False


#: Everyone, when client authentication is off (a developer's own machine). The ids match the
#: gateway's principals (``ccproxy_core.client_keys.Principal``), which jobs carry.
LOCAL_IDENTITY = ClientIdentity(id=ANONYMOUS, name=ANONYMOUS, admin=True)
#: The holder of ``SECURITY__AUTH_TOKEN``.
ADMIN_IDENTITY = ClientIdentity(id=SHARED_TOKEN, name="admin", admin=True)


def presented_key(request: Request) -> str | None:
    """The key sent as ``x-api-key`` or ``Authorization: Bearer``."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class KeyResolver(Protocol):
    async def identify(self, key: str | None) -> ClientIdentity | None:
        """The identity behind ``key`` (:data:`LOCAL_IDENTITY` when client authentication is
        off), or None when the key is missing or not valid."""
        ...


class SingleTokenResolver:
    """``SECURITY__AUTH_TOKEN`` alone: its holder is the admin; unset, everyone is local."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    async def identify(self, key: str | None) -> ClientIdentity | None:
        if self._token is None:
            return LOCAL_IDENTITY
        if key is None or not hmac.compare_digest(key.encode(), self._token):
            return None
        return ADMIN_IDENTITY


class _Key(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


class KeyLookup(Protocol):
    """The part of the auth service's key authority this needs (``ccproxy_core.client_keys``)."""

    async def lookup(self, presented: str) -> _Key | None: ...

    async def any_keys(self) -> bool: ...


class MemberKeyResolver:
    """Per-member keys (issue 5) plus the shared token: members are who their key says, the
    token's holder is the admin; with neither configured, client authentication is off."""

    def __init__(self, token: str | None, keys: KeyLookup) -> None:
        self._single = SingleTokenResolver(token)
        self._token = token
        self._keys = keys

    async def identify(self, key: str | None) -> ClientIdentity | None:
        if self._token is None and not await self._keys.any_keys():
            return LOCAL_IDENTITY
        if key is None:
            return None
        if self._token is not None and await self._single.identify(key) is not None:
            return ADMIN_IDENTITY
        found = await self._keys.lookup(key)
        if found is None:
            return None
        return ClientIdentity(id=found.id, name=found.name or found.id, admin=False)


def key_resolver(settings: Settings, internal_secret: str) -> KeyResolver:
    """A stack service's resolver (permissions, analytics): the holder of ``SECURITY__AUTH_TOKEN``
    is the admin; member keys are looked up in the auth service (``SERVICES__AUTH_URL``) and
    cached briefly (``SECURITY__KEY_CACHE_SECONDS``)."""
    value = settings.security.auth_token
    token = value.get_secret_value() if value else None
    if not settings.services.auth_url:
        return SingleTokenResolver(token)
    authority = HttpKeyAuthority(settings.services.auth_url, internal_secret)
    return MemberKeyResolver(token, CachedKeys(authority, ttl=settings.security.key_cache_seconds))
