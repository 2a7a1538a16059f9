"""The web console (``/admin``) and the member page (``/me``): static pages (``static/``) calling
auth's JSON endpoints with a session cookie (:mod:`ccproxy_auth.sessions`). ``/admin`` signs in
with ``SECURITY__ADMIN_TOKEN`` and uses the admin API; ``/me`` signs in with a member's own key and
shows its limits and spend, its requests and approvals read from ``/logs`` and ``/permissions``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ccproxy_auth.admin import Endpoint, admin_routes, need_keys
from ccproxy_auth.keys import KeyStore
from ccproxy_auth.pool import AccountPool
from ccproxy_auth.sessions import (
    ADMIN_COOKIE,
    ADMIN_SESSION_SECONDS,
    MEMBER_SESSION_SECONDS,
    AdminAccess,
    Session,
    SessionStore,
    check_csrf,
    clear_cookie,
    same_origin,
    set_cookie,
)
from ccproxy_core.errors import ProxyError
from ccproxy_core.identity import MEMBER_COOKIE
from ccproxy_core.settings import Settings

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
ASSETS = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "me.js": "text/javascript; charset=utf-8",
}


def _static(name: str) -> str:
    return resources.files("ccproxy_auth").joinpath("static", name).read_text(encoding="utf-8")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


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


def web_routes(settings: Settings, pool: AccountPool, keys: KeyStore | None) -> list[Route]:
    """The console, the member page and the admin API they use, on the pool's Redis (the
    embedded one in ``ccproxy serve`` without ``REDIS__URL``: sessions then last one process)."""
    access = AdminAccess(settings, SessionStore(pool.redis, settings.redis.key_prefix))
    return [*console_routes(access, keys), *admin_routes(settings, pool, keys, access)]


def console_routes(access: AdminAccess, keys: KeyStore | None) -> list[Route]:
    sessions: SessionStore = access.sessions

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise ProxyError(404, "no such file", "not_found_error")
        return Response(_static(name), media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    def sign_out(cookie: str, find: Callable[[Request], Awaitable[Session | None]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            found = await find(request)
            if found is not None:
                check_csrf(request, found)
                await sessions.delete(found)
            response = _json({"signed_in": False})
            clear_cookie(response, cookie)
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
        sid, found = await access.sign_in(request, await _secret_from_body(request, "token"))
        response = _json({"signed_in": True, "csrf": found.csrf, "keys": keys is not None})
        set_cookie(request, response, ADMIN_COOKIE, sid, ADMIN_SESSION_SECONDS)
        return response

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
        presented = await _secret_from_body(request, "key")
        await sessions.check_not_blocked(request)
        info = await store.lookup(presented)
        if info is None:
            await sessions.failed(request)
            raise ProxyError(401, "unknown, revoked or expired client key", "authentication_error")
        sid, found = await sessions.create("member", key_id=info.id)
        response = _json({"signed_in": True, "csrf": found.csrf})
        set_cookie(request, response, MEMBER_COOKIE, sid, MEMBER_SESSION_SECONDS)
        return response

    async def me_state(request: Request) -> Response:
        store = need_keys(keys, "; ask your team lead")
        found = await member(request)
        info = await store.get(found.key_id) if found is not None else None
        if found is None or info is None or not info.usable():
            raise ProxyError(401, "sign in with your client key", "authentication_error")
        row = await store.usage(info)
        spent = row["period_spent_usd"]
        budget = info.budget_usd
        row["left_usd"] = max(0.0, budget - spent) if budget is not None and spent is not None else None
        return _json(row)

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
