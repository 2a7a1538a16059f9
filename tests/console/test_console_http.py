"""The console's sessions over plain HTTP, where a browser would not let us misbehave: the CSRF
token, cross-site requests, wrong tokens, the member session outside its reads; and the console
with no admin token configured (in Chromium: the how-to page, nothing else)."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest

from tests.accounts.helpers import make_team
from tests.console.conftest import ADMIN
from tests.support.browser import Page
from tests.support.fake import FakeUpstream
from tests.support.process import Proc

pytestmark = pytest.mark.timeout(120)


def signed_in(proc: Proc) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=proc.url)
    resp = client.post("/admin/session", json={"token": ADMIN})
    assert resp.status_code == 200, resp.text
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and ADMIN not in cookie and "Path=/" in cookie
    return client, resp.json()["csrf"]


def test_every_change_needs_the_csrf_token(served: Proc) -> None:
    client, csrf = signed_in(served)
    try:
        assert client.get("/admin/keys").status_code == 200  # a read needs none
        missing = client.post("/admin/keys", json={"name": "mallory"})
        assert missing.status_code == 403 and "CSRF" in missing.json()["error"]["message"]
        forged = csrf[:-1] + ("y" if csrf.endswith("x") else "x")  # always one character off
        wrong = client.post("/admin/keys", json={"name": "mallory"}, headers={"x-csrf-token": forged})
        assert wrong.status_code == 403
        cross = client.post("/admin/keys", json={"name": "mallory"},
                            headers={"x-csrf-token": csrf, "origin": "http://evil.example"})
        assert cross.status_code == 403
        assert client.get("/admin/keys").json() == []  # none of those made a key
        made = client.post("/admin/keys", json={"name": "carol"}, headers={"x-csrf-token": csrf})
        assert made.status_code == 201
        key_id = made.json()["id"]
        assert client.patch(f"/admin/keys/{key_id}", json={"rpm": 5}).status_code == 403
        assert client.delete(f"/admin/keys/{key_id}").status_code == 403
        assert client.delete("/admin/session").status_code == 403  # sign-out too (no forced sign-out)
        edited = client.patch(f"/admin/keys/{key_id}", json={"rpm": 5, "budget_usd": 2.5},
                              headers={"x-csrf-token": csrf})
        assert edited.status_code == 200 and edited.json()["rpm"] == 5 and edited.json()["period"] == "month"
        bad = client.patch(f"/admin/keys/{key_id}", json={"rpm": -1}, headers={"x-csrf-token": csrf})
        assert bad.status_code == 400
        cleared = client.patch(f"/admin/keys/{key_id}", json={"rpm": None}, headers={"x-csrf-token": csrf})
        assert cleared.json()["rpm"] is None and cleared.json()["budget_usd"] == 2.5
        # A sign-in posted as a form (what another site could make a browser send) is refused.
        assert httpx.post(served.url + "/admin/session", data={"token": ADMIN}).status_code == 403
        assert client.delete("/admin/session", headers={"x-csrf-token": csrf}).status_code == 200
        assert client.get("/admin/keys").status_code == 401
    finally:
        client.close()
    assert ADMIN not in served.log_text()


def test_wrong_tokens_are_refused_then_rate_limited(served: Proc) -> None:
    for _ in range(10):
        resp = httpx.post(served.url + "/admin/session", json={"token": "guess-" + "g" * 30})
        assert resp.status_code == 401 and resp.json()["error"]["message"] == "wrong admin token"
    blocked = httpx.post(served.url + "/admin/session", json={"token": ADMIN})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    # The bearer API counts the same failures.
    assert httpx.get(served.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 429


def test_member_session_reads_only(served: Proc) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    assert httpx.get(served.url + "/api/v1/models").status_code == 200  # no keys yet: a local machine
    made = httpx.post(served.url + "/admin/keys", json={"name": "dave"}, headers=admin).json()
    # With no shared token, "are there keys?" is asked afresh: the first key closes the door at once.
    assert httpx.get(served.url + "/api/v1/models").status_code == 401
    member = httpx.Client(base_url=served.url)
    with member:
        assert member.post("/me/session", json={"key": "ccp_" + "n" * 40}).status_code == 401
        resp = member.post("/me/session", json={"key": made["key"]})
        assert resp.status_code == 200 and made["key"] not in resp.headers["set-cookie"]
        assert member.get("/me/state").json()["name"] == "dave"
        assert member.get("/logs/query").status_code == 200
        assert member.get("/api/v1/models").status_code == 401
        assert member.post("/api/v1/messages", json={}).status_code == 401
        assert member.get("/admin/keys").status_code == 401  # a member session is no admin session
        # Revoking the key ends what its session could see.
        httpx.delete(served.url + f"/admin/keys/{made['id']}", headers=admin)
        assert member.get("/me/state").status_code == 401
        assert member.get("/logs/query").status_code == 401


@pytest.fixture
def unconfigured(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> Proc:
    team = make_team(tmp_path, fake_upstream, prefix)  # no SECURITY__ADMIN_TOKEN
    team.add_api_key("main")
    return team.serve()


async def test_without_an_admin_token_the_console_only_says_how(unconfigured: Proc, page: Page) -> None:
    try:
        await page.goto(unconfigured.url + "/admin")
        await page.until("!!document.getElementById('off')", "the how-to page")
        text = await page.evaluate("document.body.innerText")
        assert "SECURITY__ADMIN_TOKEN" in text and "ccproxy generate-token" in text
        assert await page.evaluate("document.querySelectorAll('form, input, button').length") == 0
        guess = {"token": "anything-" + "a" * 30}
        assert httpx.post(unconfigured.url + "/admin/session", json=guess).status_code == 404
        assert httpx.get(unconfigured.url + "/admin/keys", headers={"authorization": "Bearer x"}).status_code == 404
        assert httpx.get(unconfigured.url + "/admin/session").json() == {"signed_in": False, "enabled": False}
    finally:
        unconfigured.stop()
