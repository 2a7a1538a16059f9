"""The same accounts and keys through the stack: ``ccproxy run`` auth, api-forwarder and gateway
as separate processes behind Traefik; the forwarder asks auth's pool over HTTP and the gateway
asks auth about keys over HTTP (cached)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.accounts.helpers import MODEL, REDIS_URL, make_team, nonce
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import launch_stack

ADMIN = "admin-" + "x" * 32


def test_failover_limits_and_revocation_through_the_stack(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    settings = {"AUTH__SECRET_BACKEND": "file", "AUTH__STRATEGY": "fill_first", "SECURITY__KEY_CACHE_SECONDS": "1",
                "SECURITY__ADMIN_TOKEN": ADMIN}
    team = make_team(tmp_path, fake_upstream, prefix, REDIS__URL=REDIS_URL, **settings)
    team.add_oauth("alpha")
    team.add_oauth("beta")
    created = json.loads(team.ccproxy("keys", "create", "--json", "--name", "ivan", "--rpm", "3").stdout)
    ghost = json.loads(team.ccproxy("keys", "create", "--json", "--name", "gus", "--accounts", "ghost").stdout)
    stack = launch_stack(team.run_dir, fake_url=fake_upstream.url, claude_config_dir=None,
                         env={"REDIS__KEY_PREFIX": prefix, **settings})
    try:
        anonymous = anthropic.Anthropic(base_url=stack.url + "/api", api_key="nope", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            anonymous.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        # A key bound to accounts that do not exist is the client's 403, as in serve, not a 502.
        bound = anthropic.Anthropic(base_url=stack.url + "/api", api_key=ghost["key"], max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            bound.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        assert "ghost" in denied.value.message
        sdk = anthropic.Anthropic(base_url=stack.url + "/api", api_key=created["key"], max_retries=0)
        n1 = nonce()
        answer = sdk.messages.create(
            model=MODEL, max_tokens=10,
            messages=[{"role": "user", "content": f"{n1} [[fake:acct={team.fp('alpha')}/quota5h@600]]"}],
        )
        assert answer.content[0].text.startswith("Echo:")
        assert team.seen(n1) == [("alpha", 429), ("beta", 200)]
        assert team.status()["alpha"]["cooldown"]["reason"] == "quota:five_hour"
        for _ in range(2):
            n = nonce()
            sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": n}])
            assert team.seen(n) == [("beta", 200)]
        with pytest.raises(anthropic.RateLimitError) as caught:
            sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "4th"}])
        assert "3 requests per minute" in caught.value.message
        team.ccproxy("keys", "revoke", created["id"])
        revoked = time.monotonic()

        def refused() -> bool:
            try:
                sdk.models.list()
            except anthropic.AuthenticationError:
                return True
            return False

        wait_until(refused, timeout=5, interval=0.1, message="revocation to reach the gateway")
        assert time.monotonic() - revoked < 3
        assert created["key"] not in stack.log_text()
    finally:
        stack.stop()


def test_admin_api_manages_keys_and_accounts(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> None:
    settings = {"AUTH__SECRET_BACKEND": "file", "SECURITY__ADMIN_TOKEN": ADMIN}
    team = make_team(tmp_path, fake_upstream, prefix, REDIS__URL=REDIS_URL, **settings)
    stack = launch_stack(team.run_dir, fake_url=fake_upstream.url, claude_config_dir=None,
                         env={"REDIS__KEY_PREFIX": prefix, **settings})
    try:
        admin = stack.service_url("auth") + "/admin"
        auth = {"authorization": f"Bearer {ADMIN}"}
        assert httpx.get(admin + "/keys").status_code == 401
        assert httpx.get(admin + "/keys", headers={"authorization": "Bearer wrong"}).status_code == 401
        api_key = fake_upstream.api_key()
        added = httpx.post(admin + "/accounts", headers=auth, json={"name": "api-1", "api_key": api_key})
        assert added.status_code == 201 and api_key not in added.text
        created = httpx.post(admin + "/keys", headers=auth, json={"name": "judy", "rpm": 5})
        assert created.status_code == 201
        key = created.json()["key"]
        sdk = anthropic.Anthropic(base_url=stack.url + "/api", api_key=key, max_retries=0)
        n = nonce()
        sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": n}])
        team.tokens["api-1"] = api_key
        assert team.seen(n) == [("api-1", 200)]
        listed = httpx.get(admin + "/keys", headers=auth).json()
        assert [k["name"] for k in listed] == ["judy"] and key not in json.dumps(listed)
        accounts = httpx.get(admin + "/accounts", headers=auth).json()
        assert [a["name"] for a in accounts] == ["api-1"] and api_key not in json.dumps(accounts)
        assert httpx.delete(admin + "/keys/judy", headers=auth).status_code == 200
        assert httpx.get(admin + "/keys?all=1", headers=auth).json()[0]["revoked_at"] is not None
    finally:
        stack.stop()
