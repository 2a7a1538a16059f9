"""The caller, in process: one backend resolves the presented key once and sets ``request.user``;
routes under /api, /sdk, /permissions and /logs are closed to anonymous callers by default.

No processes: Starlette's TestClient over the real gateway app (and small apps built the way the
services build theirs); the key authority and the forwarder are in-memory doubles of their
protocols, which is what these units talk to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from ccproxy_core.client_keys import Admission, CachedKeys, KeyInfo, Settlement, UsageReport
from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import ForwardRequest, UpstreamReply
from ccproxy_core.identity import (
    ANONYMOUS,
    LEAD,
    LOCAL,
    KeyBackend,
    caller,
    caller_middleware,
    guard_routes,
    presented_key,
    public,
)
from ccproxy_core.settings import SecuritySettings, Settings
from ccproxy_core.tokens import CredentialStatus
from ccproxy_forwarder.forwarder import routing_hints
from ccproxy_gateway.app import Gateway, create_app

TOKEN = "lead-token-0123456789abcdef"
MEMBER = "ccp_member_secret_0123456789"


class Keys:
    """An in-memory key authority (auth's protocol): counts lookups, keys can be added later."""

    def __init__(self, *keys: tuple[str, KeyInfo]) -> None:
        self.keys = dict(keys)
        self.lookups = 0
        #: Member page sessions, by the SHA-256 of the cookie.
        self.sessions: dict[str, KeyInfo] = {}

    async def lookup(self, presented: str) -> KeyInfo | None:
        self.lookups += 1
        return self.keys.get(presented)

    async def any_keys(self, fresh: bool = False) -> bool:
        return bool(self.keys)

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        return self.sessions.get(sid_digest)

    async def admit(self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int) -> Admission:
        return Admission(key_id=key.id, key_name=key.name)

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        return Settlement()


class Forwarder:
    """Records what the gateway hands the forwarder; answers a fixed message."""

    def __init__(self) -> None:
        self.seen: list[ForwardRequest] = []

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        self.seen.append(request)
        body = (b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",'
                b'"content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn",'
                b'"usage":{"input_tokens":1,"output_tokens":1}}')

        async def chunks() -> AsyncIterator[bytes]:
            yield body

        async def close() -> None:
            return None

        return UpstreamReply(200, {"content-type": "application/json"}, chunks(), close)


async def _ok() -> CredentialStatus:
    return CredentialStatus(available=True, source="test")


def member_key() -> KeyInfo:
    return KeyInfo(id="k_ann", name="ann", accounts=["work"])


def gateway_app(tmp_path: Path, keys: Keys | None, token: str | None = None,
                extra: list[Route] | None = None) -> tuple[TestClient, Forwarder]:
    security = SecuritySettings(auth_token=SecretStr(token) if token else None)
    settings = Settings(data_dir=tmp_path, security=security)
    forwarder = Forwarder()
    gateway = Gateway(settings, forwarder, _ok, keys=keys)
    return TestClient(create_app(gateway, extra_routes=list(extra or [])), raise_server_exceptions=False), forwarder


async def whoami(request: Request) -> Response:
    """A route written with no auth code at all, as a newcomer would add one."""
    user = caller(request)
    return JSONResponse({"id": user.id, "name": user.name, "admin": user.admin})


MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}


# -- the one parser --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-api-key": "a", "authorization": "Bearer b"}, "a"),
        ({"authorization": "Bearer  b "}, "b"),
        ({"authorization": "bearer b"}, "b"),
        ({"authorization": "Basic b"}, None),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(Headers(headers)) == expected


# -- the backend -----------------------------------------------------------------------------------


async def test_backend_callers() -> None:
    keys = Keys((MEMBER, member_key()))
    backend = KeyBackend(TOKEN, keys)
    assert await backend.identify(TOKEN) == LEAD
    ann = await backend.identify(MEMBER)
    assert ann is not None and (ann.id, ann.name, ann.admin, ann.key) == ("k_ann", "ann", False, member_key())
    assert await backend.identify("ccp_nobody") is None
    assert await backend.identify(None) is None
    assert backend.enabled
    assert await KeyBackend(None, Keys()).identify(None) == LOCAL  # client auth off: the local admin
    assert await KeyBackend(None).identify("anything") == LOCAL


async def test_a_key_made_after_no_keys_was_cached_works_at_once() -> None:
    """CachedKeys keeps only found keys: "no keys exist" cached must not shut out a new key."""
    keys = Keys()
    backend = KeyBackend(None, CachedKeys(keys, ttl=60))
    assert await backend.identify(None) == LOCAL  # "no keys" is now cached for a minute
    keys.keys[MEMBER] = member_key()
    found = await backend.identify(MEMBER)
    assert found is not None and found.id == "k_ann"
    before = keys.lookups
    await backend.identify(MEMBER)
    assert keys.lookups == before  # found: cached
    await backend.identify("ccp_unknown")
    await backend.identify("ccp_unknown")
    assert keys.lookups == before + 2  # unknown key-shaped strings: looked up again


# -- closed by default ---------------------------------------------------------------------------


def small_app(backend: KeyBackend) -> TestClient:
    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return PlainTextResponse(exc.message, status_code=exc.status)

    routes = guard_routes([
        Route("/health", whoami),
        Route("/sdk/brand-new", whoami),
        Route("/logs/brand-new", whoami),
        public(Route("/permissions/page", whoami)),
    ])
    app = Starlette(routes=routes, middleware=[caller_middleware(backend)], exception_handlers={ProxyError: on_error})
    return TestClient(app)


def test_a_new_guarded_route_without_auth_code_is_refused_to_anonymous() -> None:
    client = small_app(KeyBackend(None, Keys((MEMBER, member_key()))))
    for path in ("/sdk/brand-new", "/logs/brand-new"):
        r = client.get(path)
        assert (r.status_code, r.text) == (401, "missing client key: send it as x-api-key or Authorization: Bearer")
        r = client.get(path, headers={"x-api-key": "ccp_wrong"})
        assert (r.status_code, r.text) == (401, "invalid client key")
        r = client.get(path, headers={"authorization": f"Bearer {MEMBER}"})
        assert r.status_code == 200 and r.json() == {"id": "k_ann", "name": "ann", "admin": False}
    # Open by declaration, or outside the guarded paths: the caller is still known there.
    assert client.get("/health").json()["id"] == ANONYMOUS.id
    assert client.get("/permissions/page").status_code == 200
    assert client.get("/health", headers={"x-api-key": MEMBER}).json()["id"] == "k_ann"


def test_everything_is_open_with_client_auth_off() -> None:
    client = small_app(KeyBackend(None, Keys()))
    assert client.get("/sdk/brand-new").json() == {"id": "anonymous", "name": "anonymous", "admin": True}


def test_redis_down_while_resolving_is_a_503_not_a_401() -> None:
    class Down(Keys):
        async def any_keys(self, fresh: bool = False) -> bool:
            raise ConnectionError("redis is down")

    r = small_app(KeyBackend(None, Down())).get("/sdk/brand-new", headers={"x-api-key": MEMBER})
    assert r.status_code == 503


# -- the gateway, as serve and the stack build it -------------------------------------------------


def test_gateway_refuses_in_the_format_the_client_spoke(tmp_path: Path) -> None:
    client, forwarder = gateway_app(tmp_path, Keys((MEMBER, member_key())))
    r = client.post("/api/v1/messages", json=MESSAGE)
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["message"].startswith("missing client key")
    r = client.post("/api/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer ccp_wrong"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid client key"
    assert "type" not in r.json() or r.json()["type"] != "error"  # OpenAI's shape, not Anthropic's
    assert forwarder.seen == []
    # Open without a caller: health, metrics, the probes Claude Code sends before its key.
    assert client.get("/health").status_code == 200
    assert client.head("/api").status_code == 200
    assert client.head("/sdk/anything").status_code == 200


def test_a_route_added_to_the_gateway_under_sdk_is_closed(tmp_path: Path) -> None:
    client, _ = gateway_app(tmp_path, Keys((MEMBER, member_key())), extra=[Route("/sdk/v1/new", whoami)])
    assert client.get("/sdk/v1/new").status_code == 401
    assert client.get("/sdk/v1/new", headers={"x-api-key": TOKEN}).status_code == 401  # no token set
    assert client.get("/sdk/v1/new", headers={"x-api-key": MEMBER}).json()["id"] == "k_ann"


def test_the_callers_key_travels_with_the_forward_request(tmp_path: Path) -> None:
    """Metering and the account restriction get the key from the request, not from a ContextVar."""
    client, forwarder = gateway_app(tmp_path, Keys((MEMBER, member_key())), token=TOKEN)
    assert client.post("/api/v1/messages", json=MESSAGE, headers={"x-api-key": MEMBER}).status_code == 200
    assert client.post("/api/v1/chat/completions", json=CHAT, headers={"x-api-key": MEMBER}).status_code == 200
    assert client.post("/api/v1/messages", json=MESSAGE, headers={"x-api-key": TOKEN}).status_code == 200
    assert [f.key.id if f.key else None for f in forwarder.seen] == ["k_ann", "k_ann", None]
    # The forwarder routes by the same field: the key's accounts only.
    assert routing_hints(forwarder.seen[0]) == {"key": "k_ann", "accounts": "work"}
    assert routing_hints(forwarder.seen[2]) == {}


# -- the member page's session: GET reads of /logs and /permissions only ---------------------------


def test_member_session_cookie_is_a_caller_for_reads_of_logs_and_permissions_only(tmp_path: Path) -> None:
    import hashlib

    keys = Keys((MEMBER, member_key()))
    keys.sessions[hashlib.sha256(b"sid-of-ann").hexdigest()] = member_key()
    extra = [Route(p, whoami, methods=["GET", "POST"]) for p in ("/logs/whoami", "/permissions/whoami", "/elsewhere")]
    client, forwarder = gateway_app(tmp_path, keys, TOKEN, extra)
    client.cookies.set("ccproxy_me", "sid-of-ann")
    assert client.get("/logs/whoami").json() == {"id": "k_ann", "name": "ann", "admin": False}
    assert client.get("/permissions/whoami").json()["id"] == "k_ann"
    assert client.post("/logs/whoami").status_code == 401  # a change: never by cookie
    assert client.post("/api/v1/messages", json=MESSAGE).status_code == 401
    assert client.get("/api/v1/models").status_code == 401
    assert client.get("/elsewhere").json()["id"] == "anonymous"
    assert forwarder.seen == []
    client.cookies.set("ccproxy_me", "someone-elses-guess")
    assert client.get("/logs/whoami").status_code == 401
    # A presented key wins over the cookie (and is what the member would have used anyway).
    assert client.get("/logs/whoami", headers={"authorization": f"Bearer {TOKEN}"}).json()["admin"] is True
