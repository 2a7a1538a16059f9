"""Subscription credentials: found in CLAUDE_CONFIG_DIR, refreshed single-flight ahead of expiry
and on a 401, written back atomically for the Claude CLI; clear errors when there are none or
the refresh fails."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from tests.e2e_api.conftest import CLIENT_KEY, MODEL
from tests.support.fake import FakeUpstream
from tests.support.process import Proc
from tests.support.serve import UNKNOWN_KEY, UNKNOWN_VALUE, write_credentials


def config_with(tmp_path: Path, oauth: dict[str, Any]) -> Path:
    config_dir = tmp_path / "claude-cfg"
    write_credentials(config_dir, oauth, extra={UNKNOWN_KEY: UNKNOWN_VALUE})
    return config_dir


def read_doc(config_dir: Path) -> dict[str, Any]:
    return json.loads((config_dir / ".credentials.json").read_text())  # type: ignore[no-any-return]


def ask(proc: Proc, text: str = "hi") -> anthropic.types.Message:
    client = anthropic.Anthropic(base_url=proc.url + "/api", api_key=CLIENT_KEY, max_retries=0)
    return client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": text}])


def refreshes(proc: Proc, outcome: str) -> float:
    """``ccproxy_token_refreshes_total`` of ``outcome`` on serve's /metrics (0 if not there yet)."""
    text = httpx.get(proc.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ccproxy_token_refreshes_total{") and f'outcome="{outcome}"' in line)


async def test_twenty_concurrent_requests_one_refresh(
    tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any
) -> None:
    old = fake_upstream.credentials(expired=True, refresh_delay=0.5)
    config_dir = config_with(tmp_path, old)
    path = config_dir / ".credentials.json"
    inode_before = path.stat().st_ino
    proc = start_serve(config_dir=config_dir)
    client = anthropic.AsyncAnthropic(base_url=proc.url + "/api", api_key=CLIENT_KEY, max_retries=0)
    answers = await asyncio.gather(*[
        client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": f"n{i}"}])
        for i in range(20)
    ])
    assert [a.content[0].text for a in answers] == [f"Echo: n{i}" for i in range(20)]
    calls = fake_upstream.token_calls(old["refreshToken"])
    assert len(calls) == 1 and calls[0]["status"] == 200, calls
    assert (refreshes(proc, "ok"), refreshes(proc, "failed")) == (1, 0)  # one refresh, counted once
    new_access, new_refresh = calls[0]["access_token"], calls[0]["new_refresh_token"]
    # Every request went upstream with the one new token; none with the expired one.
    tokens = {fake_upstream.request(a._request_id)["auth"]["fingerprint"] for a in answers}
    assert tokens == {fake_upstream.fingerprint(new_access)}
    assert not fake_upstream.requests(token=old["accessToken"])
    # The rotated pair is where the Claude CLI reads it, replaced atomically, private, nothing lost.
    doc = read_doc(config_dir)
    assert doc["claudeAiOauth"]["accessToken"] == new_access
    assert doc["claudeAiOauth"]["refreshToken"] == new_refresh
    assert doc["claudeAiOauth"]["expiresAt"] > time.time() * 1000 + 3600_000
    assert doc["claudeAiOauth"]["subscriptionType"] == old["subscriptionType"]
    assert doc["claudeAiOauth"]["scopes"] == old["scopes"]
    assert doc[UNKNOWN_KEY] == UNKNOWN_VALUE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode_before, "written to a new file and renamed over (atomic)"
    assert sorted(p.name for p in config_dir.iterdir()) == [".credentials.json"], "no temp file left"
    # The old refresh token is dead now (rotation): the CLI must use the written-back one.
    retry = httpx.post(fake_upstream.token_url, json={
        "grant_type": "refresh_token", "refresh_token": old["refreshToken"],
        "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e"})
    assert retry.status_code == 400


def test_refreshed_ahead_of_expiry(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any) -> None:
    old = fake_upstream.credentials(expires_in=60)  # still valid, but inside the refresh margin
    config_dir = config_with(tmp_path, old)
    proc = start_serve(config_dir=config_dir)
    msg = ask(proc)
    assert len(fake_upstream.token_calls(old["refreshToken"])) == 1
    new_access = read_doc(config_dir)["claudeAiOauth"]["accessToken"]
    assert new_access != old["accessToken"]
    assert fake_upstream.request(msg._request_id)["auth"]["fingerprint"] == fake_upstream.fingerprint(new_access)


def test_refresh_once_on_upstream_401(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any) -> None:
    old = fake_upstream.credentials(revoked=True)  # looks valid for hours, the upstream says 401
    config_dir = config_with(tmp_path, old)
    proc = start_serve(config_dir=config_dir)
    msg = ask(proc, "after a 401")
    assert msg.content[0].text == "Echo: after a 401"
    assert len(fake_upstream.token_calls(old["refreshToken"])) == 1
    refused = fake_upstream.requests(token=old["accessToken"])
    assert [r["status"] for r in refused] == [401]
    assert read_doc(config_dir)["claudeAiOauth"]["accessToken"] != old["accessToken"]
    # A second request uses the new token straight away: no more refreshes.
    ask(proc, "again")
    assert len(fake_upstream.token_calls(old["refreshToken"])) == 1


def test_upstream_401_after_refresh_is_relayed(tmp_path: Path, fake_upstream: FakeUpstream,
                                               start_serve: Any) -> None:
    """A 401 that a fresh token does not cure reaches the client after exactly one refresh."""
    old = fake_upstream.credentials()
    config_dir = config_with(tmp_path, old)
    proc = start_serve(config_dir=config_dir)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        ask(proc, "x [[fake:error=401]]")
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert len(fake_upstream.token_calls(old["refreshToken"])) == 1


def test_refresh_failure_is_a_clear_401(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any) -> None:
    old = fake_upstream.credentials(expired=True, refresh_valid=False)
    proc = start_serve(config_dir=config_with(tmp_path, old))
    started = time.monotonic()
    resp = httpx.post(proc.url + "/api/v1/messages", timeout=30, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})
    assert time.monotonic() - started < 10
    assert resp.status_code == 401
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "refresh" in body["error"]["message"].lower() and "log in" in body["error"]["message"].lower()
    assert old["refreshToken"] not in resp.text and old["accessToken"] not in resp.text
    assert "refresh" in proc.log_text().lower() and "WARNING" in proc.log_text()
    assert refreshes(proc, "failed") >= 1 and refreshes(proc, "ok") == 0
    # Nothing went upstream with the dead token.
    assert not fake_upstream.requests(token=old["accessToken"])


def test_no_credentials(tmp_path: Path, start_serve: Any) -> None:
    empty = tmp_path / "empty-claude"
    empty.mkdir()
    proc = start_serve(config_dir=empty)
    warning = next(line for line in proc.log_text().splitlines() if "WARNING" in line)
    assert "no claude credentials found" in warning.lower() and "log in" in warning
    health = httpx.get(proc.url + "/health").json()
    assert health["ready"] is False
    resp = httpx.post(proc.url + "/api/v1/messages", timeout=30, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert "No Claude credentials found" in resp.json()["error"]["message"]
    assert "Traceback" not in proc.log_text()


def test_credentials_picked_up_without_restart(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any
                                               ) -> None:
    """The user logs in with the Claude CLI while ccproxy runs: no restart needed."""
    config_dir = tmp_path / "later"
    config_dir.mkdir()
    proc = start_serve(config_dir=config_dir)
    assert httpx.get(proc.url + "/health").json()["ready"] is False
    # Expired and no refresh token: present but not usable, and /health says so.
    dead = fake_upstream.credentials(expired=True)
    write_credentials(config_dir, {k: v for k, v in dead.items() if k != "refreshToken"})
    health = httpx.get(proc.url + "/health").json()
    assert health["ready"] is False and health["checks"]["credentials"]["detail"]
    assert dead["accessToken"] not in str(health)
    write_credentials(config_dir, fake_upstream.credentials())
    assert httpx.get(proc.url + "/health").json()["ready"] is True
    assert ask(proc, "now").content[0].text == "Echo: now"


def test_health_ready_with_credentials(start_serve: Any, claude_config_dir: Path) -> None:
    proc = start_serve()
    body = httpx.get(proc.url + "/health").json()
    assert body["status"] == "ok" and body["ready"] is True
    doc = read_doc(claude_config_dir)
    assert doc["claudeAiOauth"]["accessToken"] not in json.dumps(body)
