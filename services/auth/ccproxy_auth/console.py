"""The web console (``/admin``, signed in with ``SECURITY__ADMIN_TOKEN``) and the member page (``/me``,
signed in with a member's own key): static pages (``static/``) calling auth's JSON endpoints with a session
cookie. The cookie holds a random id; Redis keeps, under its SHA-256 (a dump of Redis holds no usable cookie),
the role, a CSRF token every change must carry and the admin token's fingerprint (a new token ends sessions)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ccproxy_auth.keys import KeyStore, need_keys, session_key
from ccproxy_core.client_keys import hash_key
from ccproxy_core.errors import ProxyError
from ccproxy_core.identity import MEMBER_COOKIE
from ccproxy_core.redis import as_text
from ccproxy_core.settings import Settings

Endpoint = Callable[[Request], Awaitable[Response]]
ADMIN_COOKIE = "ccproxy_admin"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Seconds a session lives (not extended by use: sign in again after).
ADMIN_SESSION_SECONDS = 8 * 3600
MEMBER_SESSION_SECONDS = 24 * 3600
MAX_FAILURES = 10
FAILURE_WINDOW = 300

Role = Literal["admin", "member"]


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"})


def fingerprint(secret: str) -> str:
    """A one-way mark of the admin token a session was opened with (not the token)."""
    return hashlib.sha256(b"ccproxy-console\0" + secret.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Session:
    digest: str
    csrf: str
    key_id: str = ""
    admin_fp: str = ""


class SessionStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def open(self, request: Request, role: Role, *, key_id: str = "", admin_fp: str = "",
                   **answer: Any) -> Response:
        """Sign in: a new session, and the answer that sets its cookie and hands the page its CSRF token."""
        sid = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        ttl = ADMIN_SESSION_SECONDS if role == "admin" else MEMBER_SESSION_SECONDS
        key = session_key(self.prefix, hash_key(sid))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"role": role, "csrf": csrf, "key_id": key_id, "admin_fp": admin_fp,
                                "created_at": repr(time.time())})
        pipe.expire(key, ttl)
        await pipe.execute()
        response = _json({"signed_in": True, "csrf": csrf, **answer})
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        cookie = ADMIN_COOKIE if role == "admin" else MEMBER_COOKIE
        response.set_cookie(cookie, sid, max_age=ttl, path="/", httponly=True, samesite="strict", secure=secure)
        return response

    async def get(self, sid: str | None, role: Role) -> Session | None:
        if not sid or len(sid) > 100:
            return None
        found = hash_key(sid)  # what the gateway looks a member cookie up by
        raw = await self.redis.hgetall(session_key(self.prefix, found))
        r = {as_text(k): as_text(v) for k, v in raw.items()}
        if r.get("role") != role:
            return None
        return Session(found, r.get("csrf", ""), r.get("key_id", ""), r.get("admin_fp", ""))

    async def delete(self, session: Session) -> None:
        await self.redis.delete(session_key(self.prefix, session.digest))

    async def attempt(self, request: Request, accepted: bool, refusal: ProxyError) -> None:
        """Raise ``refusal`` for a wrong admin token or member key, and 429 after :data:`MAX_FAILURES`
        of them from one address within :data:`FAILURE_WINDOW` seconds (neither can be guessed)."""
        key = f"{self.prefix}console:failures:{request.client.host if request.client else '?'}"
        count = await self.redis.get(key)
        if count is not None and int(as_text(count)) >= MAX_FAILURES:
            ttl = await self.redis.ttl(key)
            wait = max(1, int(ttl)) if ttl and int(ttl) > 0 else FAILURE_WINDOW
            raise ProxyError(429, f"too many failed sign-ins from this address; try again in {wait} s",
                             "rate_limit_error", headers={"retry-after": str(wait)})
        if not accepted:
            if await self.redis.incr(key) == 1:
                await self.redis.expire(key, FAILURE_WINDOW)
            raise refusal


def same_origin(request: Request) -> bool:
    """False for a request a browser says comes from another site (no Origin: not a browser's
    cross-site request, so allowed; the CSRF token still applies)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def check_csrf(request: Request, session: Session) -> None:
    """Refuse a state-changing request without the session's CSRF token (or from another site)."""
    if request.method in SAFE_METHODS:
        return
    presented = request.headers.get(CSRF_HEADER, "")
    if not same_origin(request) or not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise ProxyError(403, "missing or wrong CSRF token (reload the page)", "permission_error")


class AdminAccess:
    """Who may use the admin API: ``Authorization: Bearer $SECURITY__ADMIN_TOKEN`` (scripts), or
    a console session opened with that token (browsers; CSRF token on every change)."""

    def __init__(self, settings: Settings, sessions: SessionStore) -> None:
        value = settings.security.admin_token.get_secret_value() if settings.security.admin_token else ""
        self._token = value.encode() if value.strip() else None  # empty: off, never "anyone"
        self.enabled = self._token is not None
        self.fingerprint = fingerprint(value) if self._token else ""
        self.sessions = sessions

    async def check_token(self, request: Request, presented: str) -> None:
        """404 while off; 401 for a wrong token, 429 after many (counted per client address)."""
        if not self.enabled:
            raise ProxyError(404, "the admin API is off (set SECURITY__ADMIN_TOKEN)", "not_found_error")
        right = self._token is not None and hmac.compare_digest(presented.strip().encode(), self._token)
        await self.sessions.attempt(request, right, ProxyError(401, "wrong admin token", "authentication_error"))

    async def session(self, request: Request) -> Session | None:
        """The request's admin session, if it was opened with the current admin token."""
        if not self.enabled:
            return None
        found = await self.sessions.get(request.cookies.get(ADMIN_COOKIE), "admin")
        if found is None or not hmac.compare_digest(found.admin_fp.encode(), self.fingerprint.encode()):
            return None
        return found

    async def check(self, request: Request) -> Session | None:
        """Let the admin through or raise: 404 while off, 401 without a valid token or session,
        403 for a change without the session's CSRF token, 429 after many wrong tokens."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" or not self.enabled:  # off: check_token answers 404
            await self.check_token(request, value)
            return None
        found = await self.session(request)
        if found is None:
            raise ProxyError(401, "admin token required (Authorization: Bearer …, or sign in at /admin)",
                             "authentication_error")
        check_csrf(request, found)
        return found


#: What the pages may load: their own files, nothing inline, no frames (clickjacking).
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
ASSETS = {"console.css": "text/css", "console.js": "text/javascript", "admin.js": "text/javascript",
          "me.js": "text/javascript"}


def _static(name: str) -> str:
    return resources.files("ccproxy_auth").joinpath("static", name).read_text(encoding="utf-8")


async def _secret_from_body(request: Request, field: str) -> str:
    """The token or key a sign-in posts: JSON only (a cross-site form cannot send it), same site."""
    if not request.headers.get("content-type", "").startswith("application/json") or not same_origin(request):
        raise ProxyError(403, "sign in from the page itself", "permission_error")
    try:
        data = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, "the body must be JSON") from exc
    value = data.get(field) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ProxyError(400, f"{field} is required")
    return value.strip()


def console_routes(access: AdminAccess, keys: KeyStore | None) -> list[Route]:
    sessions: SessionStore = access.sessions

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise ProxyError(404, "no such file", "not_found_error")
        media_type = f"{ASSETS[name]}; charset=utf-8"
        return Response(_static(name), media_type=media_type, headers={"cache-control": "no-cache"})

    def sign_out(cookie: str, find: Callable[[Request], Awaitable[Session | None]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            found = await find(request)
            if found is not None:
                check_csrf(request, found)
                await sessions.delete(found)
            response = _json({"signed_in": False})
            response.delete_cookie(cookie, path="/", httponly=True, samesite="strict")
            return response

        return endpoint

    async def admin_page(request: Request) -> Response:
        page = "admin.html" if access.enabled else "admin_off.html"
        return Response(_static(page), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def admin_state(request: Request) -> Response:
        found = await access.session(request)
        if found is None:
            return _json({"signed_in": False, "enabled": access.enabled})
        return _json({"signed_in": True, "enabled": True, "csrf": found.csrf, "keys": keys is not None})

    async def admin_sign_in(request: Request) -> Response:
        await access.check_token(request, await _secret_from_body(request, "token"))
        return await sessions.open(request, "admin", admin_fp=access.fingerprint, keys=keys is not None)

    async def member(request: Request) -> Session | None:
        if keys is None:
            return None
        return await sessions.get(request.cookies.get(MEMBER_COOKIE), "member")

    async def me_page(request: Request) -> Response:
        return Response(_static("me.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def me_session(request: Request) -> Response:
        found = await member(request)
        if found is None:
            return _json({"signed_in": False, "keys": keys is not None})
        return _json({"signed_in": True, "csrf": found.csrf})

    async def me_sign_in(request: Request) -> Response:
        store = need_keys(keys, "; ask your team lead")
        info = await store.lookup(await _secret_from_body(request, "key"))
        refusal = ProxyError(401, "unknown, revoked or expired client key", "authentication_error")
        await sessions.attempt(request, info is not None, refusal)
        assert info is not None  # attempt() raised the refusal otherwise
        return await sessions.open(request, "member", key_id=info.id)

    async def me_state(request: Request) -> Response:
        store = need_keys(keys, "; ask your team lead")
        found = await member(request)
        info = await store.get(found.key_id) if found is not None else None
        if found is None or info is None or not info.usable():
            raise ProxyError(401, "sign in with your client key", "authentication_error")
        usage = await store.usage(info)
        spent, budget = usage.period_spent_usd, info.budget_usd
        left = max(0.0, budget - spent) if budget is not None and spent is not None else None
        return _json({**usage.model_dump(), "left_usd": left})

    return [
        Route("/admin", admin_page, methods=["GET"]),
        Route("/admin/assets/{name}", asset, methods=["GET"]),
        Route("/admin/session", admin_state, methods=["GET"]),
        Route("/admin/session", admin_sign_in, methods=["POST"]),
        Route("/admin/session", sign_out(ADMIN_COOKIE, access.session), methods=["DELETE"]),
        Route("/me", me_page, methods=["GET"]),
        Route("/me/assets/{name}", asset, methods=["GET"]),
        Route("/me/session", me_session, methods=["GET"]),
        Route("/me/session", me_sign_in, methods=["POST"]),
        Route("/me/session", sign_out(MEMBER_COOKIE, member), methods=["DELETE"]),
        Route("/me/state", me_state, methods=["GET"]),
    ]
