"""Who is calling, decided once per request, the way Starlette's ``AuthenticationMiddleware`` does it.

:class:`KeyBackend` reads the presented key (``x-api-key`` or ``Authorization: Bearer``, parsed
by :func:`presented_key` alone), resolves it through the key authority (auth's keys, in process
or over HTTP, cached briefly by :class:`~ccproxy_core.client_keys.CachedKeys`) and sets
``request.user`` to a :class:`Caller`: a member key (id, name, limits), the holder of
``SECURITY__AUTH_TOKEN`` (:data:`LEAD`), everyone on a machine without client auth
(:data:`LOCAL`), or nobody (:data:`ANONYMOUS`, with the reason in ``request.auth``).

It never refuses by itself (``/health`` and ``/metrics`` stay open): routes under
:data:`GUARDED_PREFIXES` are closed by :func:`guard_routes` when the app is built, so a route
added there later is closed too unless it is declared :func:`public`. The gateway, ``ccproxy
serve``, the permissions and the analytics services all build their apps this way.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ccproxy_core.client_keys import CachedKeys, HttpKeyAuthority, KeyAuthority, KeyInfo, looks_like_key
from ccproxy_core.errors import ProxyError
from ccproxy_core.redis import UNAVAILABLE, unavailable_error
from ccproxy_core.settings import Settings

#: Routes under these paths need a caller (when client auth is on) unless declared public.
GUARDED_PREFIXES = ("/api", "/sdk", "/permissions", "/logs")
#: The member page's session cookie (auth's ``/me``). It stands for the member's key only on
#: GET/HEAD under :data:`SESSION_READ_PREFIXES` (their own log lines and pending approvals):
#: never on ``/api`` or ``/sdk``, never for a change.
MEMBER_COOKIE = "ccproxy_me"
SESSION_READ_PREFIXES = ("/logs", "/permissions")
MISSING_KEY = "missing client key: send it as x-api-key or Authorization: Bearer"
INVALID_KEY = "invalid client key"


@dataclass(frozen=True, slots=True)
class Caller(BaseUser):
    """The caller of one request. ``id`` (the key's id, never the key itself) travels in jobs, events and
    logs; ``admin`` sees and decides everyone's permission requests and log lines."""

    id: str
    name: str
    admin: bool = False
    #: The member key with its limits (rate, budget, accounts); None for the others.
    key: KeyInfo | None = None
    authenticated: bool = True

    @property
    def is_authenticated(self) -> bool:
        return self.authenticated

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.id

    @property
    def member(self) -> bool:
        """A member key's holder (whose requests are logged and metered under its key)."""
        return self.key is not None


#: Nobody: no valid key while client auth is on (refused on guarded routes).
ANONYMOUS = Caller(id="anonymous", name="anonymous", authenticated=False)
#: Everyone, when client auth is off (a developer's own machine): the local admin.
LOCAL = Caller(id="anonymous", name="anonymous", admin=True)
#: The holder of ``SECURITY__AUTH_TOKEN``: the team's lead, admin.
LEAD = Caller(id="default", name="admin", admin=True)


class Credentials(AuthCredentials):
    """``request.auth``: the scopes, and for a refused caller why (401, or 503 with Redis down)."""

    def __init__(self, scopes: Sequence[str] = (), refusal: ProxyError | None = None) -> None:
        super().__init__(scopes)
        self.refusal = refusal


def presented_key(headers: Headers) -> str | None:
    """The key sent as ``x-api-key`` (preferred) or ``Authorization: Bearer``."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class KeyBackend(AuthenticationBackend):
    """The shared token and per-member keys. Client auth is on when the token is set or any
    client key exists; then a request without a valid key is :data:`ANONYMOUS`."""

    def __init__(self, token: str | None, keys: KeyAuthority | None = None) -> None:
        self._token = token.encode() if token else None
        self.keys = keys
        #: Whether client keys exist (refreshed on every request, cached by ``keys``).
        self._keys_active = False

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._keys_active

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        key = presented_key(conn.headers)
        try:
            if key is None and self.keys is not None and _session_read(conn):
                sid = conn.cookies[MEMBER_COOKIE]
                found = await self.keys.member_session(hashlib.sha256(sid.encode()).hexdigest())
                if found is not None:
                    member = Caller(id=found.id, name=found.name or found.id, key=found)
                    return Credentials(["authenticated", "session"]), member
            caller = await self.identify(key)
        except ProxyError as exc:
            return Credentials(refusal=exc), ANONYMOUS
        except UNAVAILABLE as exc:  # client keys live in Redis: a 503, not a 401
            return Credentials(refusal=unavailable_error(exc, "client keys")), ANONYMOUS
        if caller is None:
            return Credentials(refusal=ProxyError(401, MISSING_KEY if key is None else INVALID_KEY)), ANONYMOUS
        return Credentials(["authenticated"]), caller

    async def identify(self, key: str | None) -> Caller | None:
        """The caller behind ``key``; :data:`LOCAL` with client auth off; None if nobody."""
        if self.keys is not None:
            self._keys_active = await self.keys.any_keys()
        found = None
        if key is not None and self._token is not None and hmac.compare_digest(key.encode(), self._token):
            return LEAD
        # A key-shaped string is looked up even while "no keys exist" is cached: a key made a
        # moment ago must work on its first request (the cache keeps only what was found).
        if key is not None and self.keys is not None and (self._keys_active or looks_like_key(key)):
            found = await self.keys.lookup(key)
        if found is not None:
            self._keys_active = True
            return Caller(id=found.id, name=found.name or found.id, key=found)
        return None if self.enabled else LOCAL


def _session_read(conn: HTTPConnection) -> bool:
    """A safe read by the member page: its cookie, GET/HEAD, a path it may read."""
    if conn.scope.get("method") not in ("GET", "HEAD") or not conn.cookies.get(MEMBER_COOKIE):
        return False
    path = "/" + conn.url.path.lstrip("/")
    return any(path == p or path.startswith(p + "/") for p in SESSION_READ_PREFIXES)


def caller_middleware(backend: KeyBackend) -> Middleware:
    """The middleware that sets ``request.user`` and ``request.auth`` from ``backend``."""
    return Middleware(AuthenticationMiddleware, backend=backend)


def key_backend(settings: Settings, internal_secret: str) -> KeyBackend:
    """A stack service's backend (permissions, analytics): the shared token, and member keys
    looked up in the auth service (``SERVICES__AUTH_URL``) over HTTP, cached for
    ``SECURITY__KEY_CACHE_SECONDS`` (only found keys: a key just made works at once)."""
    value = settings.security.auth_token
    token = value.get_secret_value() if value else None
    if not settings.services.auth_url:
        return KeyBackend(token)
    authority = HttpKeyAuthority(settings.services.auth_url, internal_secret)
    return KeyBackend(token, CachedKeys(authority, settings.security.key_cache_seconds))


def caller(conn: HTTPConnection) -> Caller:
    """The caller the backend resolved (:data:`ANONYMOUS` if the app has no backend)."""
    user = conn.scope.get("user")
    return user if isinstance(user, Caller) else ANONYMOUS


class _RequireCaller:
    """Refuse a request whose caller is :data:`ANONYMOUS`, with the backend's reason."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if not isinstance(user, Caller) or not user.is_authenticated:
            auth = scope.get("auth")
            refusal = auth.refusal if isinstance(auth, Credentials) else None
            raise refusal or ProxyError(401, MISSING_KEY)
        await self.app(scope, receive, send)


_PUBLIC = "_ccproxy_public"


def public(route: BaseRoute) -> BaseRoute:
    """Declare that ``route`` needs no caller (a probe, a static page that asks for the key)."""
    setattr(route, _PUBLIC, True)
    return route


def guard_routes(routes: Iterable[BaseRoute], prefixes: Sequence[str] = GUARDED_PREFIXES) -> list[BaseRoute]:
    """``routes``, with every route under ``prefixes`` refusing anonymous callers unless declared
    :func:`public`: closed by default, whoever adds a route and wherever."""
    out = list(routes)
    for route in out:
        if getattr(route, _PUBLIC, False) or not isinstance(route, Route | Mount):
            continue
        if isinstance(route.app, _RequireCaller):  # built twice (tests): guarded once
            continue
        if any(route.path == p or route.path.startswith(p + "/") for p in prefixes):
            route.app = _RequireCaller(route.app)
    return out
