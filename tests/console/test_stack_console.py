"""The console and the member page through the stack: Traefik routes ``/admin`` and ``/me`` to
the auth service (and ``/metrics``, ``/media`` still to the gateway); a member's session, made by
auth, is accepted for GET reads by the analytics and permissions services, never by the gateway."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.accounts.helpers import MODEL, REDIS_URL, make_team
from tests.console.conftest import ADMIN
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import launch_stack

pytestmark = pytest.mark.timeout(180)


def test_admin_and_me_route_to_auth_through_traefik(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> None:
    settings = {"SECURITY__ADMIN_TOKEN": ADMIN, "AUTH__SECRET_BACKEND": "file", "ANALYTICS__BATCH_SECONDS": "0.1",
                "SECURITY__KEY_CACHE_SECONDS": "1"}
    team = make_team(tmp_path, fake_upstream, prefix, REDIS__URL=REDIS_URL, **settings)
    team.add_api_key("main")
    stack = launch_stack(team.run_dir, fake_url=fake_upstream.url, claude_config_dir=None,
                         env={"REDIS__KEY_PREFIX": prefix, **settings})
    try:
        page = httpx.get(stack.url + "/admin")
        assert page.status_code == 200 and "ccproxy console" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "ccproxy: my usage" in httpx.get(stack.url + "/me").text
        assert httpx.get(stack.url + "/admin/assets/admin.js").status_code == 200
        # Prefix look-alikes stay the gateway's.
        assert "# TYPE ccproxy_" in httpx.get(stack.url + "/metrics").text
        assert httpx.get(stack.url + "/media").status_code == 404

        lead = httpx.Client(base_url=stack.url)
        csrf = lead.post("/admin/session", json={"token": ADMIN}).json()["csrf"]
        made = lead.post("/admin/keys", json={"name": "erin", "budget_usd": 3.0}, headers={"x-csrf-token": csrf})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        sdk = anthropic.Anthropic(base_url=stack.url + "/api", api_key=key, max_retries=0)
        sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        listed = wait_until(lambda: [k for k in lead.get("/admin/keys").json() if k["requests"] == 1],
                            timeout=10, message="the request counted on the key")
        assert listed[0]["name"] == "erin" and listed[0]["period_spent_usd"] > 0
        lead.close()

        member = httpx.Client(base_url=stack.url)
        assert member.post("/me/session", json={"key": key}).status_code == 200
        assert member.get("/me/state").json()["name"] == "erin"
        # The analytics service (another process) takes auth's member session for reads.
        rows = wait_until(lambda: member.get("/logs/query").json().get("data"), timeout=30, interval=0.2,
                          message="erin's request in /logs/query with the session cookie")
        assert [r["key_name"] for r in rows] == ["erin"]
        assert member.get("/permissions").status_code == 200  # the permissions service too
        assert member.get("/api/v1/models").status_code == 401  # never the gateway's API
        assert member.get("/admin/keys").status_code == 401
        member.close()
    finally:
        stack.stop()
