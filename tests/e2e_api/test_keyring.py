"""Credentials in the OS keyring (service ``Claude Code-credentials``), used when
``$CLAUDE_CONFIG_DIR/.credentials.json`` is absent, and a refresh writes the rotated pair back
there. The backend is a real one that needs no daemon: ``keyrings.alt``'s plaintext file, chosen
with PYTHON_KEYRING_BACKEND and kept in tmp through XDG_DATA_HOME."""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
from keyrings.alt.file import PlaintextKeyring

from ccproxy_auth.accounts import KEYRING_SERVICE
from tests.e2e_api.conftest import CLIENT_KEY, MODEL
from tests.support.fake import FakeUpstream
from tests.support.process import Proc
from tests.support.serve import UNKNOWN_KEY, UNKNOWN_VALUE

BACKEND = "keyrings.alt.file.PlaintextKeyring"
#: ``getpass.getuser()`` in the server: its environment has no LOGNAME/USER, so the passwd name
#: (the name the Claude CLI uses too).
USERNAME = pwd.getpwuid(os.getuid()).pw_name


def keyring_at(tmp_path: Path) -> tuple[PlaintextKeyring, dict[str, str | None]]:
    """The backend the server will use, and the environment that makes it use it."""
    data_home = tmp_path / "keyring-data"
    backend = PlaintextKeyring()
    backend.file_path = str(data_home / "python_keyring" / "keyring_pass.cfg")
    env: dict[str, str | None] = {
        "AUTH__USE_KEYRING": "true",
        "PYTHON_KEYRING_BACKEND": BACKEND,
        "XDG_DATA_HOME": str(data_home),
    }
    return backend, env


def store(backend: PlaintextKeyring, oauth: dict[str, Any]) -> None:
    """Write the entry the way the Claude CLI does: a JSON document, other keys beside ours."""
    doc = {UNKNOWN_KEY: UNKNOWN_VALUE, "claudeAiOauth": oauth}
    backend.set_password(KEYRING_SERVICE, USERNAME, json.dumps(doc))


def entry(backend: PlaintextKeyring) -> dict[str, Any]:
    raw = backend.get_password(KEYRING_SERVICE, USERNAME)
    assert raw, "the keyring entry is gone"
    return json.loads(raw)  # type: ignore[no-any-return]


def empty_config(tmp_path: Path) -> Path:
    config_dir = tmp_path / "claude-empty"
    config_dir.mkdir()
    return config_dir


def ask(proc: Proc, text: str) -> anthropic.types.Message:
    client = anthropic.Anthropic(base_url=proc.url + "/api", api_key=CLIENT_KEY, max_retries=0)
    return client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": text}])


def test_token_from_keyring(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any) -> None:
    backend, env = keyring_at(tmp_path)
    creds = fake_upstream.credentials()
    store(backend, creds)
    config_dir = empty_config(tmp_path)
    proc = start_serve(env=env, config_dir=config_dir)
    health = httpx.get(proc.url + "/health").json()
    assert health["ready"] is True, health
    assert health["checks"]["credentials"]["source"] == "keyring", health
    assert creds["accessToken"] not in json.dumps(health)
    msg = ask(proc, "from the keyring")
    assert msg.content[0].text == "Echo: from the keyring"
    seen = fake_upstream.request(msg._request_id)["auth"]["fingerprint"]
    assert seen == fake_upstream.fingerprint(creds["accessToken"])
    assert not list(config_dir.iterdir()), "nothing written to CLAUDE_CONFIG_DIR"


def test_refresh_writes_back_to_keyring(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any) -> None:
    backend, env = keyring_at(tmp_path)
    old = fake_upstream.credentials(expired=True)
    store(backend, old)
    config_dir = empty_config(tmp_path)
    proc = start_serve(env=env, config_dir=config_dir)
    msg = ask(proc, "after a refresh")
    assert msg.content[0].text == "Echo: after a refresh"
    calls = fake_upstream.token_calls(old["refreshToken"])
    assert len(calls) == 1 and calls[0]["status"] == 200, calls
    new_access, new_refresh = calls[0]["access_token"], calls[0]["new_refresh_token"]
    assert fake_upstream.request(msg._request_id)["auth"]["fingerprint"] == fake_upstream.fingerprint(new_access)
    assert not fake_upstream.requests(token=old["accessToken"])
    # The rotated pair is back in the keyring entry, every other key kept.
    doc = entry(backend)
    assert doc["claudeAiOauth"]["accessToken"] == new_access
    assert doc["claudeAiOauth"]["refreshToken"] == new_refresh
    assert doc["claudeAiOauth"]["expiresAt"] > time.time() * 1000 + 3600_000
    assert doc["claudeAiOauth"]["subscriptionType"] == old["subscriptionType"]
    assert doc["claudeAiOauth"]["scopes"] == old["scopes"]
    assert doc[UNKNOWN_KEY] == UNKNOWN_VALUE
    assert not (config_dir / ".credentials.json").exists()
    assert not list(config_dir.iterdir())
    # A second request uses the new token: no second refresh.
    ask(proc, "again")
    assert len(fake_upstream.token_calls(old["refreshToken"])) == 1


def test_malformed_keyring_entry_is_a_clear_error(tmp_path: Path, start_serve: Any) -> None:
    """Like a malformed .credentials.json: serve refuses to start, says why, leaks nothing."""
    backend, env = keyring_at(tmp_path)
    store(backend, {"refreshToken": "no-access-token-here"})
    proc = start_serve(env=env, config_dir=empty_config(tmp_path), wait=False)
    code = proc.process.wait(timeout=20)
    log = proc.log_text()
    assert code == 2, log
    assert "keyring entry" in log and "malformed" in log
    assert "no-access-token-here" not in log and "Traceback" not in log
