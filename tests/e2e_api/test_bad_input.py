"""Bad client input gets a 4xx in Anthropic format (never a 500), and bad start-up conditions
stop ``ccproxy serve`` with one clear line."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.e2e_api.conftest import CLIENT_KEY, MODEL, ApiServer, start_api_server
from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import start_process
from tests.support.serve import CCPROXY, run_ccproxy, write_credentials

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, deployment: str
          ) -> Iterator[ApiServer]:
    server = start_api_server(tmp_path_factory.mktemp("small"), fake_upstream,
                              env={"SERVER__MAX_BODY_BYTES": str(LIMIT)}, deployment=deployment)
    try:
        yield server
    finally:
        server.proc.stop()


def post(server: ApiServer, content: bytes | Any, content_type: str | None = "application/json",
         path: str = "/api/v1/messages") -> httpx.Response:
    headers = {"x-api-key": CLIENT_KEY}
    if content_type:
        headers["content-type"] = content_type
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30)


def assert_anthropic_error(resp: httpx.Response, status: int, error_type: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type and body["error"]["message"]
    assert "Traceback" not in resp.text


@pytest.mark.parametrize("path", ["/api/v1/messages", "/api/v1/messages/count_tokens"])
@pytest.mark.parametrize(
    ("content", "content_type", "status", "error_type"),
    [
        (b'{"model": "x", "messages": [', "application/json", 400, "invalid_request_error"),
        (b"[1, 2, 3]", "application/json", 400, "invalid_request_error"),
        (b'"a string"', "application/json", 400, "invalid_request_error"),
        (b"", "application/json", 400, "invalid_request_error"),
        (b"\xff\xfe not utf-8", "application/json", 400, "invalid_request_error"),
        (b'{"model": "x", "max_tokens": 5, "messages": []}', "text/plain", 415, "invalid_request_error"),
        (b'{"model": "x", "max_tokens": 5, "messages": []}', "application/x-www-form-urlencoded", 415,
         "invalid_request_error"),
        (b'{"max_tokens": 5, "messages": []}', "application/json", 400, "invalid_request_error"),
        (b'{"model": "x", "max_tokens": 5, "messages": "hi"}', "application/json", 400, "invalid_request_error"),
    ],
    ids=["truncated", "array", "string", "empty", "not-utf8", "text-plain", "form", "no-model", "messages-str"],
)
def test_bad_body(small: ApiServer, path: str, content: bytes, content_type: str, status: int,
                  error_type: str) -> None:
    before = len(small.fake.requests(token=small.access_token))
    assert_anthropic_error(post(small, content, content_type, path), status, error_type)
    assert len(small.fake.requests(token=small.access_token)) == before, "nothing went upstream"


def test_body_over_limit(small: ApiServer) -> None:
    big = b'{"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "' + b"a" * LIMIT + b'"}]}'
    assert_anthropic_error(post(small, big), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit must hold while streaming in
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    assert_anthropic_error(post(small, chunks()), 413, "request_too_large")
    just_under = b'{"model": "%s", "max_tokens": 5, "messages": [{"role": "user", "content": "%s"}]}' % (
        MODEL.encode(), b"a" * (LIMIT - 200))
    assert post(small, just_under).status_code == 200


def test_default_limit_allows_large_images(tmp_path: Path, start_serve: Any) -> None:
    """The default limit is at least 32 MiB: a 20 MB body passes."""
    proc = start_serve()
    content = b"a" * (20 * 1024 * 1024)
    body = b'{"model": "%s", "max_tokens": 5, "messages": [{"role": "user", "content": "%s [[fake:json]]"}]}' % (
        MODEL.encode(), content)
    resp = httpx.post(proc.url + "/api/v1/messages", content=body, timeout=60,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text[:300]


def test_unknown_route_and_method(api: ApiServer) -> None:
    resp = httpx.get(api.url + "/api/v1/messages")
    assert resp.status_code == 405 and resp.json()["type"] == "error"
    resp = httpx.get(api.url + "/api/v1/nope")
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error"


# -- start-up failures: one clear line, non-zero exit ---------------------------------------


def one_line_failure(result: Any) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "WARNING" not in line and "INFO" not in line]
    assert len(lines) == 1, result.stderr
    return str(lines[0])


def test_port_in_use(tmp_path: Path, ccproxy_env: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_failure(run_ccproxy(["serve", "--port", str(port)], ccproxy_env(), cwd=tmp_path))
    assert "already in use" in line and str(port) in line and "--port" in line


def test_unreadable_credentials(tmp_path: Path, ccproxy_env: Any) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": ')
    line = one_line_failure(run_ccproxy(["serve", "--port", str(free_port())], ccproxy_env(config_dir=broken),
                                        cwd=tmp_path))
    assert ".credentials.json" in line and "JSON" in line
    dir_instead = tmp_path / "dir"
    (dir_instead / ".credentials.json").mkdir(parents=True)
    line = one_line_failure(run_ccproxy(["serve", "--port", str(free_port())],
                                        ccproxy_env(config_dir=dir_instead), cwd=tmp_path))
    assert ".credentials.json" in line


def test_malformed_oauth_object(tmp_path: Path, ccproxy_env: Any) -> None:
    odd = tmp_path / "odd"
    write_credentials(odd, {"refreshToken": "no-access-token-here"})
    result = run_ccproxy(["serve", "--port", str(free_port())], ccproxy_env(config_dir=odd), cwd=tmp_path)
    line = one_line_failure(result)
    assert "claudeAiOauth" in line or ".credentials.json" in line
    assert "no-access-token-here" not in result.stderr


@pytest.mark.parametrize("name", ["ccproxy.toml", ".ccproxy.toml"])
def test_malformed_toml(tmp_path: Path, ccproxy_env: Any, name: str) -> None:
    (tmp_path / name).write_text("[server\nport = \n")
    line = one_line_failure(run_ccproxy(["serve", "--port", str(free_port())], ccproxy_env(), cwd=tmp_path))
    assert "config" in line.lower()


def test_invalid_setting_value(tmp_path: Path, ccproxy_env: Any) -> None:
    (tmp_path / "ccproxy.toml").write_text('[server]\nport = "not-a-number"\n')
    line = one_line_failure(run_ccproxy(["serve"], ccproxy_env(), cwd=tmp_path))
    assert "server.port" in line


def test_toml_config_is_read(tmp_path: Path, ccproxy_env: Any, fake_upstream: FakeUpstream) -> None:
    """The TOML file works when well-formed (so the failure above is about the syntax)."""
    port = free_port()
    (tmp_path / "ccproxy.toml").write_text(f"[server]\nport = {port}\n")
    env = ccproxy_env()
    env.pop("SERVER__PORT", None)
    proc = start_process([str(CCPROXY), "serve"], url=f"http://127.0.0.1:{port}",
                         health_url=f"http://127.0.0.1:{port}/health", log_path=tmp_path / "toml.log", env=env,
                         cwd=tmp_path, port=port)
    try:
        assert httpx.get(proc.url + "/health").json()["ready"] is True
    finally:
        proc.stop()
