"""Run tokens, in process: what SDK mode's Claude Code holds instead of an upstream credential.

Redis keeps only the token's SHA-256 (with the run's caller, job and session); the token is the
run's member on ``/api`` alone (metered as that member's key, logged with the run's session) and
nothing anywhere else; revoked (the run ended), it is a 401. The real runs are in tests/sdk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fakeredis
from starlette.testclient import TestClient

from ccproxy_core.identity import LEAD, RUN_TOKEN_PREFIX, KeyBackend, RunGrant, RunTokens
from ccproxy_core.settings import Settings
from ccproxy_gateway.app import Gateway, create_app
from tests.identity.test_identity import MEMBER, MESSAGE, Forwarder, Keys, _ok, member_key, small_app


def grant(**changes: object) -> RunGrant:
    base = RunGrant(caller_id="k_ann", key=member_key(), job_id="job1", session_id="sess-1")
    return base.model_copy(update=changes)


def test_redis_keeps_only_the_hash_and_the_token_is_the_runs_member_on_api_only(tmp_path: Path) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    settings = Settings(data_dir=tmp_path, redis={"key_prefix": "t:"})
    runs = RunTokens(redis, "t:")  # the worker's, on the gateway's Redis and prefix
    forwarder = Forwarder()
    gateway = Gateway(settings, forwarder, _ok, keys=Keys((MEMBER, member_key())), redis=redis)
    with TestClient(create_app(gateway), raise_server_exceptions=False) as client:
        token = client.portal.call(runs.mint, grant(), 60.0)
        assert token.startswith(RUN_TOKEN_PREFIX)
        stored = client.portal.call(redis.keys, "t:sdk:run-token:*")
        assert stored == [f"t:sdk:run-token:{hashlib.sha256(token.encode()).hexdigest()}".encode()]
        value = client.portal.call(redis.get, stored[0])
        assert token.encode() not in value and b"sess-1" in value
        assert 0 < client.portal.call(redis.ttl, stored[0]) <= 60
        # On /api: the member who started the run, with the key's limits (what the meter admits).
        assert client.post("/api/v1/messages", json=MESSAGE, headers={"x-api-key": token}).status_code == 200
        assert forwarder.seen[-1].key == member_key()
        client.portal.call(runs.revoke, token)
        assert client.post("/api/v1/messages", json=MESSAGE, headers={"x-api-key": token}).status_code == 401
        assert len(forwarder.seen) == 1


def test_the_token_is_refused_on_logs_and_permissions_and_names_the_session() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    runs = RunTokens(redis, "t:")
    backend = KeyBackend(None, Keys((MEMBER, member_key())), runs)
    with small_app(backend) as client:
        token = client.portal.call(runs.mint, grant(), 60.0)
        assert client.get("/logs/brand-new", headers={"x-api-key": token}).status_code == 401
        assert client.get("/sdk/brand-new", headers={"authorization": f"Bearer {token}"}).status_code == 401
        # A public route or /health serves it as nobody at all: never the member, never an admin.
        assert client.get("/permissions/page", headers={"x-api-key": token}).json()["id"] == "anonymous"
        assert client.get("/health", headers={"x-api-key": token}).json()["admin"] is False
        lead_run = client.portal.call(runs.mint, grant(caller_id=LEAD.id, key=None), 60.0)
        assert client.get("/logs/brand-new", headers={"x-api-key": lead_run}).status_code == 401
    caller = grant().caller()
    assert caller.key == member_key() and caller.sdk_session == "sess-1" and not caller.admin
    lead = grant(caller_id=LEAD.id, key=None).caller()
    assert lead.id == LEAD.id and lead.admin and lead.key is None and lead.sdk_session == "sess-1"
