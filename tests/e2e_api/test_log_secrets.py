"""No token, key or credential in any log line, even at debug level, through refreshes,
client-auth failures and upstream errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx

from tests.e2e_api.conftest import MODEL
from tests.support.fake import FakeUpstream
from tests.support.serve import write_credentials

CLIENT_TOKEN = "cc-log-secret-client-token-abcdefghijklmnop"
WRONG_TOKEN = "cc-log-secret-wrong-token-qrstuvwxyz012345"


def test_no_secret_in_debug_log(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any) -> None:
    old = fake_upstream.credentials(expired=True)
    config_dir = tmp_path / "claude-dbg"
    write_credentials(config_dir, old)
    proc = start_serve(config_dir=config_dir, env={"SERVER__LOG_LEVEL": "debug",
                                                   "SECURITY__AUTH_TOKEN": CLIENT_TOKEN})
    client = anthropic.Anthropic(base_url=proc.url + "/api", api_key=CLIENT_TOKEN, max_retries=0)
    client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "refresh first"}])
    with client.messages.stream(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "s"}]) as s:
        s.get_final_message()
    for marker in ("[[fake:error=401]]", "[[fake:error=500]]", "[[fake:error=429]]"):
        try:
            client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": marker}])
        except anthropic.APIStatusError:
            pass
    assert httpx.post(proc.url + "/api/v1/messages", headers={"x-api-key": WRONG_TOKEN}, json={}).status_code == 401
    assert httpx.get(proc.url + "/api/status", headers={"authorization": f"Bearer {WRONG_TOKEN}"}).status_code == 401
    httpx.post(proc.url + "/api/v1/messages", headers={"x-api-key": CLIENT_TOKEN}, content=b"{not json")
    proc.stop()  # flush everything, shutdown messages included

    calls = [c for c in fake_upstream.token_calls() if c.get("refresh_token") == old["refreshToken"]]
    assert calls, "the test must exercise a refresh"
    secrets = {CLIENT_TOKEN, WRONG_TOKEN, old["accessToken"], old["refreshToken"]}
    for call in fake_upstream.token_calls():
        if call.get("access_token"):
            secrets |= {call["access_token"], call["new_refresh_token"]}
    log = proc.log_text()
    assert "DEBUG" in log, "the server really logged at debug level"
    assert len(log.splitlines()) > 5
    for secret in secrets:
        assert secret not in log, f"a secret ({secret[:12]}...) leaked into the log"
        # Nor a long fragment of one (e.g. a token cut in half by a formatter).
        assert secret[-16:] not in log
