"""The real Claude Code CLI (pinned in package.json, installed by ``make setup``) as a client:
``claude -p`` through ccproxy answers from the fake upstream, and the upstream saw the
subscription's token, never the CLI's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake import FakeUpstream
from tests.support.serve import REPO_ROOT

CLAUDE = REPO_ROOT / "node_modules" / ".bin" / "claude"
CLIENT_TOKEN = "cc-cli-client-token-0123456789abcdefghijkl"

pytestmark = [
    pytest.mark.claude_cli,
    pytest.mark.skipif(not CLAUDE.exists(), reason=f"Claude Code CLI not installed at {CLAUDE} (run `make setup`)"),
]


def run_claude(tmp: Path, base_url: str, credential_var: str, prompt: str) -> subprocess.CompletedProcess[str]:
    home = tmp / f"cli-home-{credential_var}"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        credential_var: CLIENT_TOKEN,
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    return subprocess.run(
        [str(CLAUDE), "-p", prompt], env=env, cwd=tmp, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False,
    )


@pytest.mark.parametrize("credential_var", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
def test_claude_print_through_ccproxy(tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any,
                                      claude_config_dir: Path, credential_var: str) -> None:
    subscription = json.loads((claude_config_dir / ".credentials.json").read_text())["claudeAiOauth"]
    proc = start_serve(env={"SECURITY__AUTH_TOKEN": CLIENT_TOKEN})
    prompt = f"hello from {credential_var}"
    result = run_claude(tmp_path, proc.url + "/api", credential_var, prompt)
    assert result.returncode == 0, f"stdout={result.stdout!r}\nstderr={result.stderr!r}\n{proc.log_text()[-3000:]}"
    answer = result.stdout.strip()
    assert answer.startswith("Echo:") and answer.endswith(prompt), answer

    seen = [r for r in fake_upstream.requests(path="/v1/messages", token=subscription["accessToken"])
            if prompt in json.dumps(r["body"])]
    assert seen, "the fake upstream got the CLI's request with the subscription's token"
    request = seen[-1]
    assert request["status"] == 200 and request["outcome"] == "completed"
    assert request["auth"] == {"kind": "oauth", "fingerprint": fake_upstream.fingerprint(subscription["accessToken"])}
    assert request["query"] == {"beta": "true"}
    assert CLIENT_TOKEN not in json.dumps(request)
    assert request["body"]["stream"] is True
    # The CLI brought its own identity: ccproxy added none.
    system = request["body"]["system"]
    assert system[0]["text"].startswith("x-anthropic-billing-header:")
    assert sum("You are Claude Code" in b.get("text", "") or "Claude agent" in b.get("text", "")
               for b in system[:3]) == 1
    headers = request["headers"]
    assert headers["user-agent"].startswith("claude-cli/2.1.332")
    assert headers["x-claude-code-session-id"]
    betas = headers["anthropic-beta"].split(",")
    assert "oauth-2025-04-20" in betas and "claude-code-20250219" in betas and len(betas) == len(set(betas))
