"""Browser sessions of the web console (``/admin``) and the member page (``/me``).

A sign-in (the admin token, or a member's own key) gives a random id in an HttpOnly,
SameSite=Strict cookie; Redis keeps, under the id's SHA-256 (a dump of Redis holds no usable
cookie), the role, a CSRF token every change must carry, and a fingerprint of the admin token
(changing ``SECURITY__ADMIN_TOKEN`` ends every admin session). Failed sign-ins are counted per
client address: after :data:`MAX_FAILURES` within :data:`FAILURE_WINDOW` seconds, 429.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ccproxy_core.errors import ProxyError
from ccproxy_core.redis import as_text
from ccproxy_core.settings import Settings

ADMIN_COOKIE = "ccproxy_admin"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Seconds a session lives (not extended by use: sign in again after).
ADMIN_SESSION_SECONDS = 8 * 3600
MEMBER_SESSION_SECONDS = 24 * 3600
MAX_FAILURES = 10
FAILURE_WINDOW = 300

Role = Literal["admin", "member"]


def digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def session_key(prefix: str, sid_digest: str) -> str:
    """Where a session lives in Redis (the key store reads member sessions here too)."""
    return f"{prefix}console:session:{sid_digest}"


def fingerprint(secret: str) -> str:
    """A one-way mark of the admin token a session was opened with (not the token)."""
    return hashlib.sha256(b"ccproxy-console\0" + secret.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Session:
    digest: str
    role: Role
    csrf: str
    key_id: str = ""
    admin_fp: str = ""


class SessionStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def create(self, role: Role, *, key_id: str = "", admin_fp: str = "") -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(digest(sid), role, secrets.token_urlsafe(24), key_id, admin_fp)
        ttl = ADMIN_SESSION_SECONDS if role == "admin" else MEMBER_SESSION_SECONDS
        key = session_key(self.prefix, session.digest)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"role": role, "csrf": session.csrf, "key_id": key_id, "admin_fp": admin_fp,
                                "created_at": repr(time.time())})
        pipe.expire(key, ttl)
        await pipe.execute()
        return sid, session

    async def get(self, sid: str | None, role: Role) -> Session | None:
        if not sid or len(sid) > 100:
            return None
        found = digest(sid)
        raw = await self.redis.hgetall(session_key(self.prefix, found))
        r = {as_text(k): as_text(v) for k, v in raw.items()}
        if r.get("role") != role:
            return None
        return Session(found, role, r.get("csrf", ""), r.get("key_id", ""), r.get("admin_fp", ""))

    async def delete(self, session: Session) -> None:
        await self.redis.delete(session_key(self.prefix, session.digest))

    def _failures(self, request: Request) -> str:
        peer = request.client.host if request.client else "?"
        return f"{self.prefix}console:failures:{peer}"

    async def check_not_blocked(self, request: Request) -> None:
        count = await self.redis.get(self._failures(request))
        if count is not None and int(as_text(count)) >= MAX_FAILURES:
            ttl = await self.redis.ttl(self._failures(request))
            wait = max(1, int(ttl)) if ttl and int(ttl) > 0 else FAILURE_WINDOW
            raise ProxyError(429, f"too many failed sign-ins from this address; try again in {wait} s",
                             "rate_limit_error", headers={"retry-after": str(wait)})

    async def failed(self, request: Request) -> None:
        key = self._failures(request)
        if await self.redis.incr(key) == 1:
            await self.redis.expire(key, FAILURE_WINDOW)


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


def set_cookie(request: Request, response: Response, name: str, sid: str, max_age: int) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(name, sid, max_age=max_age, path="/", httponly=True, samesite="strict", secure=secure)


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="strict")


class AdminAccess:
    """Who may use the admin API: ``Authorization: Bearer $SECURITY__ADMIN_TOKEN`` (scripts), or
    a console session opened with that token (browsers; CSRF token on every change)."""

    def __init__(self, settings: Settings, sessions: SessionStore) -> None:
        value = settings.security.admin_token.get_secret_value() if settings.security.admin_token else ""
        self._token = value.encode() if value.strip() else None  # empty: off, never "anyone"
        self.fingerprint = fingerprint(value) if self._token else ""
        self.sessions = sessions

    @property
    def enabled(self) -> bool:
        return self._token is not None

    async def _check_token(self, request: Request, presented: str) -> None:
        """404 while off; 401 for a wrong token, 429 after many (counted per client address)."""
        if not self.enabled:
            raise ProxyError(404, "the admin API is off (set SECURITY__ADMIN_TOKEN)", "not_found_error")
        await self.sessions.check_not_blocked(request)
        if self._token is None or not hmac.compare_digest(presented.strip().encode(), self._token):
            await self.sessions.failed(request)
            raise ProxyError(401, "wrong admin token", "authentication_error")

    async def sign_in(self, request: Request, presented: str) -> tuple[str, Session]:
        await self._check_token(request, presented)
        return await self.sessions.create("admin", admin_fp=self.fingerprint)

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
        if scheme.lower() == "bearer" or not self.enabled:  # off: _check_token answers 404
            await self._check_token(request, value)
            return None
        found = await self.session(request)
        if found is None:
            raise ProxyError(401, "admin token required (Authorization: Bearer …, or sign in at /admin)",
                             "authentication_error")
        check_csrf(request, found)
        return found
