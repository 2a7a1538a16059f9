"""The fake upstream itself: it must refuse what the real API refuses, or the e2e tests prove
nothing. Talks to the fake's process directly (no ccproxy)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import urllib.parse
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import Proc, start_process, wait_until
from tests.support.serve import REPO_ROOT

IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
OAUTH_BETA = "oauth-2025-04-20"
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"


def oauth_client(fake: FakeUpstream, token: str, betas: str = OAUTH_BETA) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=fake.url, auth_token=token, max_retries=0,
        default_headers={"anthropic-beta": betas} if betas else {},
    )


def test_oauth_needs_beta_and_identity(fake_upstream: FakeUpstream) -> None:
    token = fake_upstream.credentials()["accessToken"]
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.AuthenticationError, match="OAuth authentication is currently not supported"):
        oauth_client(fake_upstream, token, betas="").messages.create(
            model="claude-sonnet-4-6", max_tokens=10, system=IDENTITY, messages=msgs)
    client = oauth_client(fake_upstream, token)
    with pytest.raises(anthropic.BadRequestError, match="only authorized for use with Claude Code"):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, system="You are a pirate.", messages=msgs)
    billing = {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cc_entrypoint=cli;"}
    ok = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=msgs,
        system=[billing, {"type": "text", "text": IDENTITY}, {"type": "text", "text": "Be brief."}],
    )
    assert ok.content[0].text == "Echo: hi"


def test_bearer_tokens_checked(fake_upstream: FakeUpstream) -> None:
    expired = fake_upstream.credentials(expired=True)["accessToken"]
    with pytest.raises(anthropic.AuthenticationError, match="expired"):
        oauth_client(fake_upstream, expired).messages.create(
            model="m", max_tokens=5, system=IDENTITY, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.AuthenticationError, match="Invalid bearer token"):
        oauth_client(fake_upstream, "sk-ant-oat01-made-up").models.list()
    key = fake_upstream.api_key()
    models = anthropic.Anthropic(base_url=fake_upstream.url, api_key=key, max_retries=0).models.list()
    assert models.data and models.data[0].type == "model"


def test_too_many_cache_breakpoints(fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=fake_upstream.url, api_key=fake_upstream.api_key(), max_retries=0)
    blocks = [{"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks with cache_control"):
        client.messages.create(model="m", max_tokens=5, system=blocks, messages=[{"role": "user", "content": "x"}])
    msgs = [{"role": "user", "content": "x"}]
    first = client.messages.create(model="m", max_tokens=5, system=blocks[:4], messages=msgs)
    again = client.messages.create(model="m", max_tokens=5, system=blocks[:4], messages=msgs)
    assert first.usage.cache_creation_input_tokens and not first.usage.cache_read_input_tokens
    assert again.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_refresh_tokens_rotate(fake_upstream: FakeUpstream) -> None:
    creds = fake_upstream.credentials(expired=True)
    body = {"grant_type": "refresh_token", "refresh_token": creds["refreshToken"], "client_id": CLIENT_ID}
    first = httpx.post(fake_upstream.token_url, json=body)
    assert first.status_code == 200, first.text
    pair = first.json()
    assert pair["refresh_token"] != creds["refreshToken"] and pair["expires_in"] > 0
    reuse = httpx.post(fake_upstream.token_url, json=body)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    client = oauth_client(fake_upstream, pair["access_token"])
    assert client.messages.create(model="m", max_tokens=5, system=IDENTITY,
                                  messages=[{"role": "user", "content": "y"}]).content[0].text == "Echo: y"
    assert len(fake_upstream.token_calls(creds["refreshToken"])) == 2


def test_authorization_code_with_pkce(fake_upstream: FakeUpstream) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://localhost:54545/callback"
    query = urllib.parse.urlencode({
        "code": "true", "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect,
        "scope": "user:inference", "code_challenge": challenge, "code_challenge_method": "S256", "state": "st8",
    })
    resp = httpx.get(f"{fake_upstream.authorize_url}?{query}", follow_redirects=False)
    assert resp.status_code == 302
    target = urllib.parse.urlparse(resp.headers["location"])
    params = dict(urllib.parse.parse_qsl(target.query))
    assert target.netloc == "localhost:54545" and params["state"] == "st8"
    exchange = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect,
                "client_id": CLIENT_ID, "state": "st8"}
    bad = httpx.post(fake_upstream.token_url, json=exchange | {"code_verifier": "wrong" * 10})
    assert bad.status_code == 400
    good = httpx.post(fake_upstream.token_url, json=exchange | {"code_verifier": verifier})
    assert good.status_code == 200 and good.json()["access_token"]
    assert httpx.post(fake_upstream.token_url, json=exchange | {"code_verifier": verifier}).status_code == 400


def test_stream_shape_and_thinking_round_trip(fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=fake_upstream.url, api_key=fake_upstream.api_key(), max_retries=0)
    tools = [{"name": "lookup", "description": "d", "input_schema": {
        "type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q", "n"]}}]
    question = {"role": "user", "content": "find it [[fake:thinking]] [[fake:tool]]"}
    kinds: list[str] = []
    with client.messages.stream(model="m", max_tokens=100, tools=tools, messages=[question]) as stream:
        for event in stream:
            kinds.append(event.type if event.type != "content_block_delta" else event.delta.type)
        final = stream.get_final_message()
    assert kinds.count("input_json_delta") >= 3 and kinds.count("signature_delta") == 1
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    thinking, _text, tool_use = final.content
    assert tool_use.type == "tool_use" and tool_use.input == {"q": "fake-q", "n": 42}
    follow_up = [question, {"role": "assistant", "content": [b.model_dump() for b in final.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "found"}]}]
    done = client.messages.create(model="m", max_tokens=100, tools=tools, messages=follow_up)
    assert f"{tool_use.id}=found" in done.content[0].text
    forged = json.loads(json.dumps(follow_up))
    forged[1]["content"][0]["signature"] = base64.b64encode(b"forged").decode()
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        client.messages.create(model="m", max_tokens=100, tools=tools, messages=forged)
    assert thinking.type == "thinking"


def test_raw_stream_has_pings_and_records_disconnect(fake_upstream: FakeUpstream) -> None:
    key = fake_upstream.api_key()
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    body = {"model": "m", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "a b c d [[fake:slow=0.2]]"}]}
    with httpx.Client(base_url=fake_upstream.url) as client, client.stream(
        "POST", "/v1/messages", json=body, headers=headers
    ) as resp:
        request_id = resp.headers["request-id"]
        first = next(resp.iter_lines())
        assert first == "event: message_start"
    # The client left after the first event; the fake must notice and stop.
    record = wait_until(lambda: (r := fake_upstream.request(request_id))["outcome"] == "disconnected" and r,
                        timeout=5, message="the fake to see the disconnect")
    assert record["events_sent"] < record["events_total"]
    full = httpx.post(fake_upstream.url + "/v1/messages", headers=headers,
                      json=body | {"messages": [{"role": "user", "content": "a b c d"}]})
    assert full.text.count("event: ping") >= 2


def test_json_answers_gzipped_when_accepted(fake_upstream: FakeUpstream) -> None:
    headers = {"x-api-key": fake_upstream.api_key(), "anthropic-version": "2023-06-01"}
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "word " * 100}]}
    gz = httpx.post(fake_upstream.url + "/v1/messages", json=body, headers=headers | {"accept-encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip" and gz.json()["content"][0]["text"].startswith("Echo:")
    plain = httpx.post(fake_upstream.url + "/v1/messages", json=body, headers=headers | {"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers


def test_long_and_echo_request_markers(fake_upstream: FakeUpstream) -> None:
    key = fake_upstream.api_key()
    client = anthropic.Anthropic(base_url=fake_upstream.url, api_key=key, max_retries=0)
    deltas = 0
    with client.messages.stream(model="m", max_tokens=1000,
                                messages=[{"role": "user", "content": "[[fake:long=50]]"}]) as stream:
        for event in stream:
            deltas += event.type == "content_block_delta"
        final = stream.get_final_message()
    assert deltas == 50 and final.content[0].text.split() == [f"word{i}" for i in range(50)]
    cut = client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "[[fake:long=50]]"}])
    assert cut.stop_reason == "max_tokens" and len(cut.content[0].text.split()) == 10
    echoed = client.messages.create(
        model="m", max_tokens=4000, system="sys", extra_headers={"anthropic-beta": "a-beta,b-beta"},
        messages=[{"role": "user", "content": "[[fake:echo_request]]"}])
    seen = json.loads(echoed.content[0].text)
    assert seen["betas"] == ["a-beta", "b-beta"] and seen["system"] == "sys" and seen["path"] == "/v1/messages"
    assert seen["headers"]["authorization"] == f"Bearer {fake_upstream.fingerprint(key)}"
    assert key not in echoed.content[0].text


def test_state_file_keeps_credentials_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"

    def start() -> Proc:
        port = free_port()
        return start_process(
            [sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--state-file", str(state)],
            url=f"http://127.0.0.1:{port}", health_url=f"http://127.0.0.1:{port}/_fake/health",
            log_path=tmp_path / f"fake-{port}.log", cwd=REPO_ROOT, port=port,
        )

    first = start()
    try:
        creds = FakeUpstream(first).credentials()
    finally:
        first.stop()
    second = start()
    try:
        client = oauth_client(FakeUpstream(second), creds["accessToken"])
        assert client.messages.create(model="m", max_tokens=5, system=IDENTITY,
                                      messages=[{"role": "user", "content": "z"}]).content[0].text == "Echo: z"
    finally:
        second.stop()
