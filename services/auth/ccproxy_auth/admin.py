"""Auth's HTTP surface for accounts and client keys: the internal routes (internal secret: the forwarder's pick
and report, the gateway's key lookups, admissions, settlements) and the admin API (the admin token, or a console
session with its CSRF token; off without ``SECURITY__ADMIN_TOKEN``). No answer carries a secret but a new key, once."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, Field, StrictInt, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ccproxy_auth import oauth
from ccproxy_auth.accounts import AccountError, check_name
from ccproxy_auth.console import AdminAccess, Endpoint, Session, SessionStore, console_routes
from ccproxy_auth.keys import KeyAdminError, KeyStore, need_keys
from ccproxy_auth.pool import AccountPool
from ccproxy_core import pricing
from ccproxy_core.client_keys import KEYS_PATH, AdmitBody, KeyInfo, Period, SettleBody
from ccproxy_core.errors import ProxyError, validation_error
from ccproxy_core.internal import json_response
from ccproxy_core.redis import Redis
from ccproxy_core.routing import PICK_PATH, REPORT_PATH, PickBody, ReportBody
from ccproxy_core.settings import Settings

B = TypeVar("B", bound=BaseModel)


def local_accounts(settings: Settings, redis: Redis, metrics: Any = None) -> tuple[AccountPool, KeyStore | None]:
    """The pool (always) and the client keys (only with a real Redis: they must be durable and
    shared, and their limits run as Lua) of this process, on its one client ``redis``."""
    # Settlement charges keys at these prices (the gateway's access log uses the same ones).
    pricing.configure(settings.pricing.overrides)
    pool = AccountPool(settings, redis, metrics=metrics)
    keys = KeyStore(redis, settings.redis.key_prefix) if settings.redis.url else None
    return pool, keys


class KeyLimitsBody(BaseModel):
    """A key's limits. Strict numbers: ``true``, ``"NaN"``, ``1e308`` are not limits (the key store
    checks ranges). In an update only the fields sent change; one sent as null is removed."""

    accounts: list[str] | None = None
    rpm: StrictInt | None = None
    tpm: StrictInt | None = None
    budget_usd: float | None = Field(default=None, allow_inf_nan=False, strict=True)
    period: Period | None = None
    expires_at: float | None = Field(default=None, allow_inf_nan=False, strict=True)


class CreateKeyBody(KeyLimitsBody):
    name: str


class ApiKeyAccountBody(BaseModel):
    name: str
    api_key: str


class OAuthStartBody(BaseModel):
    name: str


class OAuthFinishBody(BaseModel):
    login_id: str
    pasted: str


#: Seconds a started subscription login waits for its pasted code.
OAUTH_PENDING_SECONDS = 900


async def _parse(request: Request, model: type[B]) -> B:
    try:
        return model.model_validate_json(await request.body() or b"{}")
    except ValidationError as exc:
        raise validation_error(exc) from exc


def web_routes(settings: Settings, pool: AccountPool, keys: KeyStore | None) -> list[Route]:
    """The console, the member page and the admin API they use, on the pool's Redis (the
    embedded one in ``ccproxy serve`` without ``REDIS__URL``: sessions then last one process)."""
    access = AdminAccess(settings, SessionStore(pool.redis, settings.redis.key_prefix))
    return [*console_routes(access, keys), *admin_routes(settings, pool, keys, access)]


def internal_routes(pool: AccountPool, keys: KeyStore | None) -> list[Route]:
    async def accounts(request: Request) -> Response:
        return json_response([s.model_dump(mode="json") for s in await pool.accounts()])

    async def pick(request: Request) -> Response:
        body = await _parse(request, PickBody)
        credential = await pool.pick(body.hints, exclude=body.exclude, rejected=body.rejected, account=body.account)
        secret = credential.secret.get_secret_value()
        return json_response({**credential.model_dump(), "secret": secret, "single": len(pool.members()) == 1})

    async def report(request: Request) -> Response:
        body = await _parse(request, ReportBody)
        outcome = await pool.report(body.account, body.status, body.headers, body.hints)
        return json_response(outcome.model_dump())

    def find_key(field: str, find: Callable[[KeyStore, str], Awaitable[KeyInfo | None]]) -> Endpoint:
        """``{"key": ...}`` for the body's ``field`` (a key hash, a session digest), or null."""
        async def endpoint(request: Request) -> Response:
            data = orjson.loads(await request.body() or b"{}")
            found = await find(keys, str(data.get(field, ""))) if keys is not None else None
            return json_response({"key": found.model_dump() if found else None})

        return endpoint

    async def any_keys(request: Request) -> Response:
        return json_response({"any": await keys.any_keys() if keys is not None else False})

    async def admit(request: Request) -> Response:
        body = await _parse(request, AdmitBody)
        store = need_keys(keys)
        key = await store.get(body.key_id)
        if key is None:
            raise ProxyError(401, "unknown client key", "authentication_error")
        admission = await store.admit(key, body.model, body.body_bytes, body.max_tokens)
        return json_response(admission.model_dump())

    async def settle(request: Request) -> Response:
        body = await _parse(request, SettleBody)
        settlement = await need_keys(keys).settle(body.admission, body.usage)
        return json_response(settlement.model_dump())

    return [
        Route(PICK_PATH, pick, methods=["POST"]),
        Route(REPORT_PATH, report, methods=["POST"]),
        Route("/internal/accounts", accounts, methods=["GET"]),
        Route(f"{KEYS_PATH}/lookup", find_key("hash", KeyStore.lookup_hash), methods=["POST"]),
        Route(f"{KEYS_PATH}/any", any_keys, methods=["POST"]),
        Route(f"{KEYS_PATH}/session", find_key("digest", KeyStore.member_session), methods=["POST"]),
        Route(f"{KEYS_PATH}/admit", admit, methods=["POST"]),
        Route(f"{KEYS_PATH}/settle", settle, methods=["POST"]),
    ]


def admin_routes(settings: Settings, pool: AccountPool, keys: KeyStore | None, access: AdminAccess) -> list[Route]:
    """The admin API: every route lets only the admin through (:meth:`AdminAccess.check`)."""
    redis = access.sessions.redis
    pending_prefix = f"{settings.redis.key_prefix}console:oauth:"

    def owner(request: Request) -> str:
        """Whose subscription login it is: the console session's, or "" for the bearer token."""
        session: Session | None = request.state.admin
        return session.digest if session else ""

    async def list_accounts(request: Request) -> Response:
        return json_response([s.model_dump(mode="json") for s in await pool.accounts()])

    async def add_api_key_account(request: Request) -> Response:
        body = await _parse(request, ApiKeyAccountBody)
        account = pool.store.add_api_key(body.name, body.api_key)
        await pool.clear(account.name)
        return json_response(account.model_dump(mode="json"), status=201)

    async def refresh_account(request: Request) -> Response:
        credential = await pool.refresh(request.path_params["name"])
        return json_response({"account": credential.account, "expires_at": credential.expires_at})

    async def remove_account(request: Request) -> Response:
        if not pool.store.remove(request.path_params["name"]):
            raise ProxyError(404, "no such account", "not_found_error")
        await pool.clear(request.path_params["name"])
        return Response(status_code=204)

    async def oauth_start(request: Request) -> Response:
        body = await _parse(request, OAuthStartBody)
        name = check_name(body.name)
        pending = oauth.start(settings.oauth, manual=True)
        login_id = secrets.token_urlsafe(16)
        record = {"name": name, "verifier": pending.verifier, "state": pending.state,
                  "redirect_uri": pending.redirect_uri, "owner": owner(request)}
        await redis.set(pending_prefix + login_id, orjson.dumps(record), ex=OAUTH_PENDING_SECONDS)
        return json_response({"login_id": login_id, "url": pending.url, "name": name})

    async def oauth_finish(request: Request) -> Response:
        body = await _parse(request, OAuthFinishBody)
        raw = await redis.get(pending_prefix + body.login_id)
        record = orjson.loads(raw) if raw else None
        if record is None or record["owner"] != owner(request):
            raise ProxyError(404, "no such login in progress (it expires after 15 minutes); start again",
                             "not_found_error")
        pending = oauth.PendingLogin(record["verifier"], record["state"], record["redirect_uri"], "")
        code = oauth.parse_pasted(body.pasted, pending)
        oauth_pair = await oauth.finish(settings.oauth, pending, code)
        account = pool.store.add_oauth(record["name"], oauth_pair)
        await redis.delete(pending_prefix + body.login_id)
        await pool.clear(account.name)
        return json_response(account.model_dump(mode="json"), status=201)

    async def update_key(request: Request) -> Response:
        body = await _parse(request, KeyLimitsBody)
        changes = {name: getattr(body, name) for name in body.model_fields_set}
        info = await need_keys(keys).update(request.path_params["key"], changes)
        return json_response(info.model_dump())

    async def list_keys(request: Request) -> Response:
        include = request.query_params.get("all") in ("1", "true")
        return json_response([row.model_dump() for row in await need_keys(keys).listing(include)])

    async def create_key(request: Request) -> Response:
        body = await _parse(request, CreateKeyBody)
        info, plain = await need_keys(keys).create(**body.model_dump())
        return json_response({**info.model_dump(), "key": plain}, status=201)

    async def revoke_key(request: Request) -> Response:
        info = await need_keys(keys).revoke(request.path_params["key"])
        return json_response(info.model_dump())

    def admin_only(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            request.state.admin = await access.check(request)
            try:
                return await endpoint(request)
            except (AccountError, KeyAdminError, oauth.LoginError) as exc:  # cannot be done: a 400 that says why
                raise ProxyError(exc.status if isinstance(exc, KeyAdminError) else 400, str(exc)) from exc

        return guarded

    return [
        Route(path, admin_only(endpoint), methods=[method])
        for path, method, endpoint in (
            ("/admin/accounts", "GET", list_accounts),
            ("/admin/accounts", "POST", add_api_key_account),
            ("/admin/accounts/{name}/refresh", "POST", refresh_account),
            ("/admin/accounts/{name}", "DELETE", remove_account),
            ("/admin/keys", "GET", list_keys),
            ("/admin/keys", "POST", create_key),
            ("/admin/oauth/start", "POST", oauth_start),
            ("/admin/oauth/finish", "POST", oauth_finish),
            ("/admin/keys/{key}", "PATCH", update_key),
            ("/admin/keys/{key}", "DELETE", revoke_key),
        )
    ]
