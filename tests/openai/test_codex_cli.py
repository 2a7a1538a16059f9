"""The Codex CLI (npm ``@openai/codex``, pinned in package.json) as a second real client of
``/api/v1/responses``: a custom provider pointed at ``ccproxy serve`` (with client auth), one
``codex exec`` turn that thinks, runs a shell command and answers from its output, offline
against the fake upstream."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.openai.conftest import OpenAIServer, start_openai_server
from tests.support.fake import FakeUpstream
from tests.support.serve import REPO_ROOT

CODEX = REPO_ROOT / "node_modules" / ".bin" / "codex"
TOKEN = "cc-codex-test-token"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[OpenAIServer]:
    srv = start_openai_server(tmp_path_factory.mktemp("codex"), fake_upstream,
                              env={"SECURITY__AUTH_TOKEN": TOKEN})
    try:
        yield srv
    finally:
        srv.proc.stop()


def run_codex(server: OpenAIServer, tmp: Path, prompt: str, key: str = TOKEN) -> subprocess.CompletedProcess[str]:
    assert CODEX.exists(), "the Codex CLI is missing: run scripts/setup.sh (npm ci)"
    home = tmp / "codex-home"
    work = tmp / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    (work / "notes.txt").write_text("the-secret-word-is-kumquat\n")
    (home / "config.toml").write_text(
        'model_provider = "ccproxy"\n'
        'model = "gpt-5-codex"\n'
        "[model_providers.ccproxy]\n"
        'name = "ccproxy"\n'
        f'base_url = "{server.base_url}"\n'
        'env_key = "CCPROXY_API_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    env = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}
    env |= {"HOME": str(tmp), "CODEX_HOME": str(home), "CCPROXY_API_KEY": key, "NO_COLOR": "1"}
    return subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "danger-full-access",
         "-c", "model_reasoning_effort=low", prompt],
        cwd=work, env=env, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL, check=False,
    )


def test_codex_thinks_runs_a_command_and_answers_through_ccproxy(guarded: OpenAIServer, tmp_path: Path) -> None:
    marker = f"codex-{tmp_path.name}"
    prompt = f"{marker}: read the notes [[fake:thinking]] [[fake:call=exec_command?cmd=cat%20notes.txt]]"
    result = run_codex(guarded, tmp_path, prompt)
    assert result.returncode == 0, result.stderr[-3000:]
    # The final answer is the fake's echo of the tool result Codex sent: the file's content.
    assert "[tool results: toolu_" in result.stdout and "the-secret-word-is-kumquat" in result.stdout
    calls = [r for r in guarded.fake.requests(path="/v1/messages") if marker in str(r["body"])]
    assert [r["status"] for r in calls] == [200, 200]
    first, second = (r["body"] for r in calls)
    assert first["model"] == "claude-sonnet-5-5" and first["thinking"]["type"] == "enabled" and first["stream"]
    assert any(t["name"] == "exec_command" for t in first["tools"])
    # Codex sent its reasoning item back; the fake accepted the thinking block's signature.
    assistant = second["messages"][-2]
    assert [b["type"] for b in assistant["content"]] == ["thinking", "text", "tool_use"]
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"
    assert TOKEN not in str(calls)


def test_codex_with_a_wrong_key_is_refused(guarded: OpenAIServer, tmp_path: Path) -> None:
    result = run_codex(guarded, tmp_path, "hello", key="not-the-token")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert "invalid client key" in out, out[-2000:]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_sdk_with_a_wrong_key_gets_an_openai_401_and_nothing_goes_upstream(
    guarded: OpenAIServer, api: str
) -> None:
    before = len(guarded.fake.requests(path="/v1/messages"))
    client = guarded.client(api_key="not-the-token")
    with pytest.raises(openai.AuthenticationError) as caught:
        if api == "chat":
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        else:
            client.responses.create(model="gpt-4o", input="hi")
    body = caught.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "authentication_error"
    assert len(guarded.fake.requests(path="/v1/messages")) == before
    ok = guarded.client(api_key=TOKEN).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content == "Echo: hi"
