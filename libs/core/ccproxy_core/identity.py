"""Who is calling, decided once per request (Starlette's ``AuthenticationMiddleware``): a member key,
the ``SECURITY__AUTH_TOKEN`` holder (:data:`LEAD`), everyone with client auth off (:data:`LOCAL`), a run
token's run (``/api`` only) or nobody (:data:`ANONYMOUS`). The backend never refuses: each
:class:`ClosedMount` (``/api``, ``/sdk``, ``/permissions``, ``/logs``) does, unless a route is :func:`public`.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Match, Mount, Route, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from ccproxy_core.client_keys import CachedKeys, HttpKeyAuthority, KeyAuthority, KeyInfo, hash_key, looks_like_key
from ccproxy_core.errors import ProxyError
from ccproxy_core.redis import UNAVAILABLE, Redis, unavailable_error
from ccproxy_core.settings import Settings

GUARDED_PREFIXES = ("/api", "/sdk", "/permissions", "/logs")
#: The member page's session cookie (auth's ``/me``): the member's key only for GET/HEAD under
#: :data:`SESSION_READ_PREFIXES`, never on ``/api`` or ``/sdk``, never for a change.
MEMBER_COOKIE = "ccproxy_me"
SESSION_READ_PREFIXES = ("/logs", "/permissions")
MISSING_KEY = "missing client key: send it as x-api-key or Authorization: Bearer"
INVALID_KEY = "invalid client key"
RUN_TOKEN_PREFIX = "ccp_run_"


@dataclass(frozen=True, slots=True)
class Caller(BaseUser):
    """``id`` (the key's id, never the key) travels in jobs, events and logs; ``admin`` sees and
    decides everyone's permission requests and log lines."""

    id: str
    name: str
    admin: bool = False
    #: The member key with its limits (rate, budget, accounts); None for the others.
    key: KeyInfo | None = None
    is_authenticated: bool = True
    #: The SDK session whose Claude Code called with a run token ("" for a client).
    sdk_session: str = ""

    @classmethod
    def member(cls, key: KeyInfo) -> Caller:
        return cls(id=key.id, name=key.name or key.id, key=key)


ANONYMOUS = Caller(id="anonymous", name="anonymous", is_authenticated=False)
LOCAL = Caller(id="anonymous", name="anonymous", admin=True)
LEAD = Caller(id="default", name="admin", admin=True)


class Credentials(AuthCredentials):
    """``request.auth``: the scopes, and for a refused caller why (401, or 503 with Redis down)."""

    def __init__(self, scopes: Sequence[str] = (), refusal: ProxyError | None = None) -> None:
        super().__init__(scopes)
        self.refusal = refusal


class RunGrant(BaseModel):
    """What a run token stands for; Redis keeps it under the token's SHA-256, never the token."""

    caller_id: str
    #: The member key that started the run (without its secret); None for LEAD or LOCAL.
    key: KeyInfo | None = None
    job_id: str
    session_id: str

    def caller(self) -> Caller:
        if self.key is not None:
            return replace(Caller.member(self.key), sdk_session=self.session_id)
        return replace(LEAD if self.caller_id == LEAD.id else LOCAL, sdk_session=self.session_id)


class RunTokens:
    """SDK mode's Claude Code holds no upstream credential: it calls ``/api`` with a token minted for
    its one run, so each call is the run's caller's (metered, limited, logged) and nothing more."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self.redis = redis
        self.prefix = key_prefix + "sdk:run-token:"

    async def mint(self, grant: RunGrant, ttl: float) -> str:
        token = RUN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        await self.redis.set(self.prefix + hash_key(token), grant.model_dump_json(), ex=math.ceil(ttl))
        return token

    async def revoke(self, token: str) -> None:
        await self.redis.delete(self.prefix + hash_key(token))

    async def grant(self, token: str) -> RunGrant | None:
        raw = await self.redis.get(self.prefix + hash_key(token))
        return RunGrant.model_validate_json(raw) if raw is not None else None


def presented_key(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" else ""
    return headers.get("x-api-key") or bearer or None


class KeyBackend(AuthenticationBackend):
    """Client auth is on when the shared token is set or any client key exists; then a request
    without a valid key is :data:`ANONYMOUS`."""

    def __init__(self, token: str | None, keys: KeyAuthority | None = None, runs: RunTokens | None = None) -> None:
        self._token = token.encode() if token else None
        self.keys = keys
        self.runs = runs
        self._keys_active = False

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._keys_active

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        key = presented_key(conn.headers)
        path = "/" + conn.url.path.lstrip("/")
        try:
            if key is not None and key.startswith(RUN_TOKEN_PREFIX) and self.runs is not None:
                # Only /api: no run starts runs, decides permissions or reads the logs.
                grant = await self.runs.grant(key) if under(path, "/api") else None
                if grant is None:
                    return Credentials(refusal=ProxyError(401, INVALID_KEY)), ANONYMOUS
                return Credentials(["authenticated", "run"]), grant.caller()
            if key is None and self.keys is not None and _session_read(conn, path):
                found = await self.keys.member_session(hash_key(conn.cookies[MEMBER_COOKIE]))
                if found is not None:
                    return Credentials(["authenticated", "session"]), Caller.member(found)
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
            # Without the shared token, "no keys" lets a keyless caller in as LOCAL: asked afresh,
            # so the first key made closes the door at once, not a cache later.
            self._keys_active = await self.keys.any_keys(fresh=self._token is None)
        if key is not None and self._token is not None and hmac.compare_digest(key.encode(), self._token):
            return LEAD
        # A key-shaped string is looked up even while "no keys exist" is cached: a key just made works at once.
        if key is not None and self.keys is not None and (self._keys_active or looks_like_key(key)):
            found = await self.keys.lookup(key)
            if found is not None:
                self._keys_active = True
                return Caller.member(found)
        return None if self.enabled else LOCAL


def _session_read(conn: HTTPConnection, path: str) -> bool:
    """A safe read by the member page: its cookie, GET/HEAD, a path it may read."""
    safe = conn.scope.get("method") in ("GET", "HEAD") and bool(conn.cookies.get(MEMBER_COOKIE))
    return safe and any(under(path, prefix) for prefix in SESSION_READ_PREFIXES)


def under(path: str, prefix: str) -> bool:
    """``/api`` covers ``/api/v1``, never ``/apis``."""
    return path == prefix or path.startswith(prefix + "/")


def caller_middleware(backend: KeyBackend) -> Middleware:
    return Middleware(AuthenticationMiddleware, backend=backend)


def key_backend(settings: Settings, internal_secret: str) -> KeyBackend:
    """A stack service's backend: the shared token, and member keys looked up in auth over HTTP."""
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
    """A probe, or a static page that asks for the key."""
    setattr(route, _PUBLIC, True)
    return route


class ClosedMount(BaseRoute):
    """Routes closed by the mount they are in, whoever adds one. Unlike Starlette's ``Mount`` they
    keep their whole paths, so templates, metrics labels and access-log endpoints stay the same."""

    def __init__(self, prefix: str, routes: Iterable[BaseRoute]) -> None:
        self.prefix = prefix.rstrip("/")
        self.routes = list(routes)
        for route in self.routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str) or not under(path, self.prefix):
                raise ValueError(f"route {path!r} is not under the mount {self.prefix!r}")
            if getattr(route, _PUBLIC, False) or not isinstance(route, Route | Mount):
                continue
            if not isinstance(route.app, _RequireCaller):  # mounted twice (tests): guarded once
                route.app = _RequireCaller(route.app)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] not in ("http", "websocket") or not under(get_route_path(scope), self.prefix):
            return Match.NONE, {}
        partial: Scope | None = None
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return Match.FULL, {**child, "route": route}
            if match is Match.PARTIAL and partial is None:
                partial = {**child, "route": route}
        return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["route"].handle(scope, receive, send)  # the inner route matches() chose


def guard_routes(routes: Iterable[BaseRoute], prefixes: Sequence[str] = GUARDED_PREFIXES) -> list[BaseRoute]:
    """Each prefix's routes into its :class:`ClosedMount`, where its first route was (routes under
    different prefixes never match the same path, so only the order within a prefix counts)."""
    grouped: dict[str, list[BaseRoute]] = {}
    order: list[BaseRoute | str] = []
    for route in routes:
        path = getattr(route, "path", None)
        prefix = next((p for p in prefixes if isinstance(path, str) and under(path, p)), None)
        if prefix is None or isinstance(route, ClosedMount):
            order.append(route)
        else:
            if prefix not in grouped:
                order.append(prefix)
            grouped.setdefault(prefix, []).append(route)
    return [ClosedMount(item, grouped[item]) if isinstance(item, str) else item for item in order]
