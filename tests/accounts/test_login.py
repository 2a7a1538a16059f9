"""``ccproxy auth login`` end to end against the fake OAuth endpoints: PKCE S256 with a local
callback (the test plays the browser: it opens the authorize URL the command prints and follows
the redirect to the callback), and the manual flow (the test pastes ``code#state``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2 as httpx

from tests.accounts.helpers import MODEL, client, make_team, nonce
from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.serve import CCPROXY


def read_url(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("http"):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError("ccproxy auth login printed no URL")


def test_login_with_local_callback_then_serve_uses_the_account(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    port = free_port()
    team = make_team(tmp_path, fake_upstream, prefix, OAUTH__REDIRECT_URI=f"http://localhost:{port}/callback")
    login = subprocess.Popen(
        [str(CCPROXY), "auth", "login", "--account", "team-max", "--no-browser", "--timeout", "30"],
        env=team.env, cwd=team.run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        url = read_url(login, time.monotonic() + 20)
        query = parse_qs(urlsplit(url).query)
        assert url.startswith(fake_upstream.authorize_url)
        assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
        assert query["redirect_uri"] == [f"http://localhost:{port}/callback"]
        # The "browser": the user agrees, the authorize page redirects to our callback.
        agreed = httpx.get(url, follow_redirects=False)
        assert agreed.status_code == 302
        callback = agreed.headers["location"]
        deadline = time.monotonic() + 10
        while True:  # the callback server may need a moment to listen
            try:
                done = httpx.get(callback.replace("localhost", "127.0.0.1"))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert done.status_code == 200 and "login complete" in done.text
        out, _ = login.communicate(timeout=20)
        assert login.returncode == 0, out
    finally:
        if login.poll() is None:
            login.kill()
    assert "Logged in: account team-max" in out
    exchanged = [c for c in fake_upstream.token_calls() if c.get("grant_type") == "authorization_code"]
    issued = exchanged[-1]["access_token"]
    assert issued not in out
    # Stored at rest in a 0600 file (no keyring here), found by serve, used upstream.
    account_file = team.run_dir / "home/.local/share/ccproxy/accounts/team-max.json"
    assert stat.S_IMODE(os.stat(account_file).st_mode) == 0o600
    team.tokens["team-max"] = issued
    status = team.status()["team-max"]
    assert status["kind"] == "oauth" and status["healthy"] and status["expires_at"] > time.time() + 3600
    with team.serve() as proc:
        n = nonce()
        client(proc).messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": n}])
        assert team.seen(n) == [("team-max", 200)]


def test_manual_login_pasting_code_and_state(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> None:
    team = make_team(tmp_path, fake_upstream, prefix)
    login = subprocess.Popen(
        [str(CCPROXY), "auth", "login", "--account", "remote", "--manual", "--no-browser"],
        env=team.env, cwd=team.run_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.PIPE,
    )
    try:
        url = read_url(login, time.monotonic() + 20)
        assert "redirect_uri=https%3A%2F%2Fconsole.anthropic.com%2Foauth%2Fcode%2Fcallback" in url
        agreed = httpx.get(url, follow_redirects=False)
        shown = parse_qs(urlsplit(agreed.headers["location"]).query)  # what the page shows the user
        assert login.stdin is not None
        login.stdin.write(f"{shown['code'][0]}#{shown['state'][0]}\n")
        login.stdin.flush()
        out, _ = login.communicate(timeout=20)
    finally:
        if login.poll() is None:
            login.kill()
    assert login.returncode == 0, out
    rows = json.loads(team.ccproxy("auth", "status", "--json").stdout)
    assert [r["name"] for r in rows] == ["remote"] and rows[0]["kind"] == "oauth"


def test_manual_login_refuses_a_foreign_state(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> None:
    team = make_team(tmp_path, fake_upstream, prefix)
    done = subprocess.run(
        [str(CCPROXY), "auth", "login", "--account", "x", "--manual", "--no-browser"],
        env=team.env, cwd=team.run_dir, input="somecode#not-our-state\n", capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert done.returncode == 2 and "state mismatch" in done.stderr
    assert not (team.run_dir / "home/.local/share/ccproxy/accounts/x.json").exists()


def test_logout_and_legacy_names(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> None:
    team = make_team(tmp_path, fake_upstream, prefix)
    team.add_oauth("a")
    team.add_api_key("b")
    info = team.ccproxy("auth", "info").stdout
    assert "a: oauth" in info and "b: api_key" in info and team.tokens["a"] not in info
    assert team.tokens["b"] not in info
    assert team.ccproxy("auth", "validate").returncode == 0
    team.ccproxy("auth", "logout", "--account", "a")
    team.ccproxy("auth", "logout", "--account", "b")
    # No accounts left: the default (the CLI login, absent here) cannot serve.
    assert team.ccproxy("auth", "validate", check=False).returncode == 1
