"""Client authentication with SECURITY__AUTH_TOKEN, the non-loopback guard, generate-token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.e2e_api.conftest import MODEL, ApiServer, start_api_server
from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.serve import run_ccproxy

TOKEN = "cc-test-client-token-0123456789abcdefghij"
BODY = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, deployment: str
            ) -> Iterator[ApiServer]:
    server = start_api_server(tmp_path_factory.mktemp("guarded"), fake_upstream,
                              env={"SECURITY__AUTH_TOKEN": TOKEN}, deployment=deployment)
    try:
        yield server
    finally:
        server.proc.stop()


def assert_anthropic_401(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert TOKEN not in resp.text


def test_sdk_with_token_as_bearer(guarded: ApiServer) -> None:
    # Current anthropic SDKs send api_key as Authorization: Bearer.
    msg = guarded.client(api_key=TOKEN).messages.create(**BODY)  # type: ignore[arg-type]
    assert msg.content[0].text == "Echo: hi"
    seen = guarded.upstream(msg._request_id)
    assert seen["headers"]["authorization"] == f"Bearer {guarded.access_token}"
    assert TOKEN not in str(seen)


def test_auth_token_flavour_and_x_api_key(guarded: ApiServer) -> None:
    msg = guarded.client(api_key=None, auth_token=TOKEN).messages.create(**BODY)  # type: ignore[arg-type]
    assert msg.content[0].text == "Echo: hi"
    resp = httpx.post(guarded.url + "/api/v1/messages", json=BODY, headers={"x-api-key": TOKEN})
    assert resp.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN},
     {"x-api-key": TOKEN[:-1]}, {"authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong-key", "wrong-bearer", "no-scheme", "prefix", "basic"],
)
@pytest.mark.parametrize("route", ["/api/v1/messages", "/api/v1/messages/count_tokens", "/api/v1/models",
                                   "/api/models", "/api/status"])
def test_missing_or_wrong_token_is_401(guarded: ApiServer, headers: dict[str, str], route: str) -> None:
    before = len(guarded.fake.requests(token=guarded.access_token))
    if route.startswith("/api/v1/messages"):
        resp = httpx.post(guarded.url + route, json=BODY, headers=headers)
    else:
        resp = httpx.get(guarded.url + route, headers=headers)
    assert_anthropic_401(resp)
    assert len(guarded.fake.requests(token=guarded.access_token)) == before, "nothing went upstream"


def test_sdk_with_wrong_token(guarded: ApiServer) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        guarded.client(api_key="nope").messages.create(**BODY)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/api/v1", api_key="nope", max_retries=0).models.list()


def test_health_and_metrics_open(guarded: ApiServer) -> None:
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/metrics").status_code == 200


def test_non_loopback_without_token_refused(tmp_path: Path, ccproxy_env: Any) -> None:
    port = free_port()
    result = run_ccproxy(["serve", "--host", "0.0.0.0", "--port", str(port)], ccproxy_env(), cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SECURITY__AUTH_TOKEN" in lines[0] and "generate-token" in lines[0] and "127.0.0.1" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    env_host = run_ccproxy(["serve", "--port", str(port)], ccproxy_env({"SERVER__HOST": "192.0.2.10"}),
                           cwd=tmp_path)
    assert env_host.returncode != 0 and "SECURITY__AUTH_TOKEN" in env_host.stderr


def test_generate_token(tmp_path: Path, ccproxy_env: Any, start_serve: Any) -> None:
    first = run_ccproxy(["generate-token"], ccproxy_env(), cwd=tmp_path)
    second = run_ccproxy(["generate-token"], ccproxy_env(), cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0
    token = first.stdout.strip()
    assert token != second.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_\-]{32,}", token), token
    assert len(token) >= 40
    # And it works as the client token.
    proc = start_serve(env={"SECURITY__AUTH_TOKEN": token})
    resp = httpx.post(proc.url + "/api/v1/messages", json=BODY, headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
