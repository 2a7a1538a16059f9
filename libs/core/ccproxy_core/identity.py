"""Who is calling, decided once per request, the way Starlette's ``AuthenticationMiddleware`` does it.

:class:`KeyBackend` reads the presented key (``x-api-key`` or ``Authorization: Bearer``, parsed
by :func:`presented_key` alone), resolves it through the key authority (auth's keys, in process
or over HTTP, cached briefly by :class:`~ccproxy_core.client_keys.CachedKeys`) and sets
``request.user`` to a :class:`Caller`: a member key (id, name, limits), the holder of
``SECURITY__AUTH_TOKEN`` (:data:`LEAD`), everyone on a machine without client auth
(:data:`LOCAL`), or nobody (:data:`ANONYMOUS`, with the reason in ``request.auth``). A run token
(:class:`RunTokens`) is the caller who started that SDK run, on ``/api`` only.

It never refuses by itself (``/health`` and ``/metrics`` stay open): the mounts do. A
:class:`ClosedMount` holds the routes under one prefix (``/api``, ``/sdk``, ``/permissions``,
``/logs``) and closes every one of them to :data:`ANONYMOUS` when it is built, so a route added
to it later is closed too unless it is declared :func:`public`. :func:`guard_routes` puts an
app's routes under those prefixes into their closed mounts. The gateway, ``ccproxy serve``, the
permissions and the analytics services all build their apps this way.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.datastructures import Headers, URLPath
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Match, Mount, NoMatchFound, Route, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from ccproxy_core.client_keys import CachedKeys, HttpKeyAuthority, KeyAuthority, KeyInfo, hash_key, looks_like_key
from ccproxy_core.errors import ProxyError
from ccproxy_core.redis import UNAVAILABLE, Redis, unavailable_error
from ccproxy_core.settings import Settings

#: The closed mounts of every app: routes under them need a caller (when client auth is on)
#: unless declared public.
GUARDED_PREFIXES = ("/api", "/sdk", "/permissions", "/logs")
#: The member page's session cookie (auth's ``/me``). It stands for the member's key only on
#: GET/HEAD under :data:`SESSION_READ_PREFIXES` (their own log lines and pending approvals):
#: never on ``/api`` or ``/sdk``, never for a change.
MEMBER_COOKIE = "ccproxy_me"
SESSION_READ_PREFIXES = ("/logs", "/permissions")
MISSING_KEY = "missing client key: send it as x-api-key or Authorization: Bearer"
INVALID_KEY = "invalid client key"
#: A run token's prefix (SDK mode's Claude Code calls ``/api`` with one, :class:`RunTokens`).
RUN_TOKEN_PREFIX = "ccp_run_"


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
    #: The SDK session whose Claude Code called with a run token ("" for a client).
    sdk_session: str = ""

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


class RunGrant(BaseModel):
    """What a run token stands for; Redis keeps it under the token's SHA-256, never the token."""

    caller_id: str
    caller_name: str = ""
    #: The member key that started the run (without its secret); None for LEAD or LOCAL.
    key: KeyInfo | None = None
    job_id: str
    session_id: str

    def caller(self) -> Caller:
        if self.key is not None:
            return Caller(id=self.caller_id, name=self.caller_name or self.caller_id, key=self.key,
                          sdk_session=self.session_id)
        return replace(LEAD if self.caller_id == LEAD.id else LOCAL, sdk_session=self.session_id)


class RunTokens:
    """Per-run tokens of SDK mode. Claude Code holds no upstream credential: it calls the gateway's
    ``/api`` with a token its worker minted for that one run, so each of its calls is the run's
    caller's (metered, limited, logged as theirs) and nothing more (refused outside ``/api``)."""

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

    def __init__(self, token: str | None, keys: KeyAuthority | None = None, runs: RunTokens | None = None) -> None:
        self._token = token.encode() if token else None
        self.keys = keys
        self.runs = runs
        #: Whether client keys exist (refreshed on every request, cached by ``keys``).
        self._keys_active = False

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._keys_active

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        key = presented_key(conn.headers)
        try:
            if key is not None and key.startswith(RUN_TOKEN_PREFIX) and self.runs is not None:
                # Only /api: no run starts runs, decides permissions or reads the logs.
                grant = await self.runs.grant(key) if under(_path(conn), "/api") else None
                if grant is None:
                    return Credentials(refusal=ProxyError(401, INVALID_KEY)), ANONYMOUS
                return Credentials(["authenticated", "run"]), grant.caller()
            if key is None and self.keys is not None and _session_read(conn):
                sid = conn.cookies[MEMBER_COOKIE]
                found = await self.keys.member_session(hash_key(sid))
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
            # Without the shared token, "no keys" lets a keyless caller in as LOCAL: that answer
            # is asked afresh, so the first key made closes the door at once, not a cache later.
            self._keys_active = await self.keys.any_keys(fresh=self._token is None)
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
    return any(under(_path(conn), p) for p in SESSION_READ_PREFIXES)


def _path(conn: HTTPConnection) -> str:
    return "/" + conn.url.path.lstrip("/")


def under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it (``/api`` covers ``/api/v1``, never ``/apis``)."""
    return path == prefix or path.startswith(prefix + "/")


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


def _close(route: BaseRoute) -> None:
    if getattr(route, _PUBLIC, False) or not isinstance(route, Route | Mount):
        return
    if not isinstance(route.app, _RequireCaller):  # mounted twice (tests): guarded once
        route.app = _RequireCaller(route.app)


class ClosedMount(BaseRoute):
    """The routes under ``prefix``, each refusing an anonymous caller unless declared
    :func:`public`: closed by the mount they are in, whoever adds a route there.

    Unlike Starlette's ``Mount`` its routes keep their whole paths (``/sdk/v1/messages``), so
    their templates, metrics labels and access-log endpoints are the same as outside a mount.
    The matched route is the inner one (``scope["route"]``); a request under the prefix that no
    route answers is not this mount's either (the app's 404)."""

    def __init__(self, prefix: str, routes: Iterable[BaseRoute]) -> None:
        self.prefix = prefix.rstrip("/")
        self.routes = list(routes)
        for route in self.routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str) or not under(path, self.prefix):
                raise ValueError(f"route {path!r} is not under the mount {self.prefix!r}")
            _close(route)

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

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                continue
        raise NoMatchFound(name, path_params)


def guard_routes(routes: Iterable[BaseRoute], prefixes: Sequence[str] = GUARDED_PREFIXES) -> list[BaseRoute]:
    """``routes``, with those under each of ``prefixes`` put into that prefix's
    :class:`ClosedMount` (where the first of them was; routes under different prefixes never
    match the same path, so order within a prefix is all that counts). Mounts given already
    closed stay as they are."""
    grouped: dict[str, list[BaseRoute]] = {}
    order: list[BaseRoute | str] = []
    for route in routes:
        path = getattr(route, "path", None)
        prefix = next((p for p in prefixes if isinstance(path, str) and under(path, p)), None)
        if prefix is None or isinstance(route, ClosedMount):
            order.append(route)
            continue
        if prefix not in grouped:
            grouped[prefix] = []
            order.append(prefix)
        grouped[prefix].append(route)
    return [ClosedMount(item, grouped[item]) if isinstance(item, str) else item for item in order]
