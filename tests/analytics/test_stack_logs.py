"""The access log through the stack: gateway -> real Redis -> ``ccproxy run analytics`` ->
ClickHouse engine, read back through Traefik at ``/logs``. A member's key sees only its own
requests, the shared token's holder sees all; every service answers ``/metrics`` with no secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx

from tests.accounts.helpers import MODEL, REDIS_URL, make_team
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import launch_stack

TOKEN = "cc-test-token-stack-logs-0123456"


def rows(url: str, client_key: str, **params: Any) -> Any:
    resp = httpx.get(url + "/logs/query", params=params, headers={"x-api-key": client_key}, timeout=10)
    return resp.status_code, resp.json()


def test_logs_and_metrics_through_the_stack(tmp_path: Path, fake_upstream: FakeUpstream, key_prefix: str) -> None:
    settings = {"SECURITY__AUTH_TOKEN": TOKEN, "AUTH__SECRET_BACKEND": "file", "ANALYTICS__BATCH_SECONDS": "0.1",
                "SECURITY__KEY_CACHE_SECONDS": "1"}
    team = make_team(tmp_path, fake_upstream, key_prefix, REDIS__URL=REDIS_URL, **settings)
    team.add_oauth("alpha")
    member = json.loads(team.ccproxy("keys", "create", "--json", "--name", "ivan").stdout)
    stack = launch_stack(team.run_dir, fake_url=fake_upstream.url, claude_config_dir=None,
                         env={"REDIS__KEY_PREFIX": key_prefix, **settings})
    try:
        for key in (TOKEN, member["key"]):
            client = anthropic.Anthropic(base_url=stack.url + "/api", api_key=key, max_retries=0)
            client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])

        everything = wait_until(lambda: (r := rows(stack.url, TOKEN)[1]["data"]) and len(r) == 2 and r,
                                timeout=30, interval=0.2, message="both requests in /logs/query via Traefik")
        assert {r["key_id"] for r in everything} == {"default", member["id"]}
        assert next(r for r in everything if r["key_id"] == member["id"])["key_name"] == "ivan"
        assert all(r["account"] == "alpha" and r["status"] == 200 for r in everything)

        status, own = rows(stack.url, member["key"])
        assert status == 200 and [r["key_id"] for r in own["data"]] == [member["id"]]
        assert rows(stack.url, member["key"], key="default")[0] == 403
        assert rows(stack.url, "not-a-key-at-all-000")[0] == 401
        usage = httpx.get(stack.url + "/logs/usage", params={"group_by": "key"},
                          headers={"x-api-key": member["key"]}).json()["data"]
        assert [u["key_id"] for u in usage] == [member["id"]]
        assert httpx.get(stack.url + "/dashboard").status_code == 200  # the gateway's page, same origin

        secrets = (TOKEN, member["key"], stack.internal_secret)
        for name in ("gateway", "api-forwarder", "auth", "permissions", "sdk-worker", "analytics"):
            scraped = httpx.get(stack.service_url(name) + "/metrics")
            assert scraped.status_code == 200, name
            assert "# TYPE ccproxy_" in scraped.text, name
            assert not [s for s in secrets if s in scraped.text], name
        gateway = httpx.get(stack.service_url("gateway") + "/metrics").text
        assert f'key="{member["id"]}"' in gateway and "ccproxy_cost_usd_total{" in gateway
        assert "ccproxy_access_log_backlog{" in httpx.get(stack.service_url("analytics") + "/metrics").text
        assert "ccproxy_queue_depth{" in httpx.get(stack.service_url("sdk-worker") + "/metrics").text
        assert "ccproxy_permission_requests_pending{" in httpx.get(stack.service_url("permissions") + "/metrics").text
    finally:
        stack.stop()
