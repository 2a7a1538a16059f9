"""Issue 13, observability and information leaks: what anonymous callers, members, a Redis
outage, a dead refresh token, a slow client and a misbehaving upstream can make ``ccproxy serve``
say, hold, count or log. Every test drives real processes (``ccproxy serve``, the fake upstream,
a redis-server of the test's own where Redis must fail)."""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.redis_server import OwnRedis
from tests.support.serve import run_ccproxy, write_credentials
from tests.support.stack import SHARED_REDIS, delete_prefix, launch_stack, new_prefix

TOKEN = "cc-faults-observability-token-0123456789"
MODEL = "claude-sonnet-4-6"


def metric_labels(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name`` in a Prometheus text page."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)\{(.*)\} \S+$", line)
        if m and m.group(1) == name:
            out.append(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2))))
    return out


# -- 7: /metrics does not grow with random paths ---------------------------------------------------


def test_random_paths_do_not_grow_metrics(start_serve: Any) -> None:
    """2,000 unauthenticated requests to random paths (401 on a parameterised route, 404 on no
    route) leave /metrics the size it was: labels are route templates, one label for "no route"."""
    proc = start_serve(env={"SECURITY__AUTH_TOKEN": TOKEN})
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        # One of each first, so every label that will exist exists before the baseline.
        assert client.get("/permissions/warm-up").status_code == 401
        assert client.get("/nope/warm-up").status_code == 404
        before = client.get("/metrics").text
        seen = []
        for i in range(1000):
            for path in (f"/permissions/{secrets.token_hex(8)}", f"/nope/{secrets.token_hex(8)}/{i}"):
                seen.append(path)
                resp = client.get(path)
                assert resp.status_code in (401, 404), (path, resp.status_code)
                assert resp.json()["type"] == "error"
        after = client.get("/metrics").text
    assert len(after) - len(before) < 5_000, (len(before), len(after))
    routes = {labels["route"] for labels in metric_labels(after, "ccproxy_requests_total")}
    assert "/permissions/{request_id}" in routes and "<unmatched>" in routes, routes
    assert not any(path in after for path in seen[::97])
    assert not any("warm-up" in route for route in routes), routes


# -- 5: a Redis outage under serve with REDIS__URL is a 503 with retry-after ---------------------


def ask(url: str, key: str, text: str = "hi") -> httpx.Response:
    return httpx.post(url + "/api/v1/messages", timeout=30, headers={"x-api-key": key}, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": text}]})


def test_redis_outage_under_serve_is_a_503_with_retry_after(
    start_serve: Any, ccproxy_env: Callable[..., dict[str, str]], own_redis: OwnRedis, tmp_path: Path
) -> None:
    """serve + REDIS__URL, a member key: Redis stops, the key cache expires, and the member gets a
    503 with retry-after in their client's format (as from the stack), not a 500; Redis back: 200."""
    redis_env = {"REDIS__URL": own_redis.url, "REDIS__SOCKET_TIMEOUT": "1", "REDIS__CONNECT_TIMEOUT": "1"}
    created = run_ccproxy(["keys", "create", "--name", "member", "--json"], ccproxy_env(redis_env), tmp_path)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    proc = start_serve(env={**redis_env, "SECURITY__KEY_CACHE_SECONDS": "0.5"})
    assert ask(proc.url, key).status_code == 200

    own_redis.stop()
    # Until the key cache expires the gateway does not ask Redis about the key; then it must.
    answers: list[tuple[float, httpx.Response]] = []

    def refused() -> bool:
        started = time.monotonic()
        resp = ask(proc.url, key, "redis is down")
        answers.append((time.monotonic() - started, resp))
        return resp.status_code != 200

    wait_until(refused, timeout=15, message="the first answer after the key cache expired")
    took, resp = answers[-1]
    assert resp.status_code == 503, resp.text
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == "api_error"
    assert "Redis is unavailable" in resp.json()["error"]["message"]
    assert resp.headers.get("retry-after")
    assert took < 8
    with pytest.raises(openai.APIStatusError) as caught:
        openai.OpenAI(base_url=proc.url + "/api/v1", api_key=key, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 503
    assert caught.value.response.headers.get("retry-after")
    assert caught.value.response.json()["error"]["type"] == "server_error"
    assert "internal error" not in proc.log_text()

    own_redis.start()
    wait_until(lambda: ask(proc.url, key, "redis is back").status_code == 200, timeout=15,
               message="requests to succeed once Redis is back")


# -- 8: a dead refresh token is tried once, backs off, and /health says not ready --------------


def test_dead_refresh_token_is_tried_once_and_health_says_not_ready(
    tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any
) -> None:
    """Expired access token, refresh token refused (invalid_grant): 20 concurrent then 10
    sequential requests cause one refresh call; each client gets a clear 401; /health is not
    ready. A new login (the credentials file changes) is used at once, without a restart."""
    dead = fake_upstream.credentials(expired=True, refresh_valid=False)
    config_dir = tmp_path / "claude-dead"
    write_credentials(config_dir, dead)
    proc = start_serve(config_dir=config_dir)
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}

    def post(_: int) -> httpx.Response:
        return httpx.post(proc.url + "/api/v1/messages", json=body, timeout=30)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    answers += [post(i) for i in range(10)]
    for resp in answers:
        assert resp.status_code == 401, resp.text
        error = resp.json()["error"]
        assert resp.json()["type"] == "error" and error["type"] == "authentication_error"
        assert "log in again" in error["message"] and dead["refreshToken"] not in resp.text
    assert len(fake_upstream.token_calls(dead["refreshToken"])) == 1
    chat = httpx.post(proc.url + "/api/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 401 and chat.json()["error"]["type"] == "authentication_error"
    assert len(fake_upstream.token_calls(dead["refreshToken"])) == 1
    health = httpx.get(proc.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["ready"] is False, health.text
    assert "UNHEALTHY" in proc.log_text() and dead["refreshToken"] not in proc.log_text()

    write_credentials(config_dir, fake_upstream.credentials())  # the user logs in again
    resp = post(0)
    assert resp.status_code == 200, resp.text
    assert httpx.get(proc.url + "/health", timeout=10).json()["ready"] is True
    assert len(fake_upstream.token_calls(dead["refreshToken"])) == 1


def test_failed_refresh_ahead_of_expiry_keeps_serving_with_the_valid_token(
    tmp_path: Path, fake_upstream: FakeUpstream, start_serve: Any
) -> None:
    """The access token expires in 2 min (inside the 5 min refresh margin) and its refresh token
    is refused: requests go on with the still-valid token, and the refresh is tried once."""
    dying = fake_upstream.credentials(expires_in=120, refresh_valid=False)
    config_dir = tmp_path / "claude-dying"
    write_credentials(config_dir, dying)
    proc = start_serve(config_dir=config_dir)
    for i in range(5):
        resp = ask(proc.url, "none", f"still valid {i}")
        assert resp.status_code == 200, resp.text
    assert len(fake_upstream.token_calls(dying["refreshToken"])) == 1
    assert httpx.get(proc.url + "/health", timeout=10).json()["ready"] is True


def test_dead_refresh_token_in_the_stack(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """The same through Traefik, gateway, api-forwarder and auth: one refresh call for 20
    concurrent and 10 sequential requests, and the gateway's /health is not ready."""
    dead = fake_upstream.credentials(expired=True, refresh_valid=False)
    config_dir = tmp_path / "claude-dead"
    write_credentials(config_dir, dead)
    stack = launch_stack(tmp_path / "run", fake_url=fake_upstream.url, claude_config_dir=config_dir)
    try:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda i: ask(stack.url, "none", f"x {i}"), range(20)))
        answers += [ask(stack.url, "none", f"y {i}") for i in range(10)]
        for resp in answers:
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"]["type"] == "authentication_error" and "log in again" in resp.text
        assert len(fake_upstream.token_calls(dead["refreshToken"])) == 1
        assert httpx.get(stack.url + "/health", timeout=10).json()["ready"] is False
    finally:
        stack.stop()


# -- 10: what callers without the right key can learn ------------------------------------------


@pytest.fixture
def team_serve(start_serve: Any, ccproxy_env: Callable[..., dict[str, str]], tmp_path: Path
               ) -> Iterator[tuple[Any, str]]:
    """serve with a lead token and (shared Redis, own prefix) one member key: (proc, member key)."""
    prefix = new_prefix()
    env = {"REDIS__URL": SHARED_REDIS, "REDIS__KEY_PREFIX": prefix, "SECURITY__AUTH_TOKEN": TOKEN}
    try:
        created = run_ccproxy(["keys", "create", "--name", "mallory", "--json"], ccproxy_env(env), tmp_path)
        assert created.returncode == 0, created.stderr
        yield start_serve(env=env), json.loads(created.stdout)["key"]
    finally:
        delete_prefix(SHARED_REDIS, prefix)


def test_anonymous_health_is_status_only_and_members_see_only_their_log_status(
    team_serve: tuple[Any, str],
) -> None:
    proc, member = team_serve
    anonymous = httpx.get(proc.url + "/health", timeout=10)
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok", "ready": True}, anonymous.text
    for key in (TOKEN, member):
        detailed = httpx.get(proc.url + "/health", headers={"x-api-key": key}, timeout=10).json()
        assert detailed["ready"] is True and detailed["checks"]["credentials"]["kind"] == "oauth"
    assert ask(proc.url, member).status_code == 200
    assert ask(proc.url, TOKEN).status_code == 200

    def status(key: str) -> dict[str, Any]:
        resp = httpx.get(proc.url + "/logs/status", headers={"x-api-key": key}, timeout=10)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    lead = wait_until(lambda: (s := status(TOKEN))["clickhouse"].get("rows_stored") == 2 and s, timeout=20,
                      message="both requests to reach the log")
    assert lead["redis"]["stream_length"] >= 2 and "consumer" in lead
    mine = status(member)
    assert mine["status"] == "ok" and mine["clickhouse"] == {"available": True, "rows_stored": 1}, mine
    assert mine["redis"] == {"available": True} and "consumer" not in mine, mine


def test_trailing_slash_does_not_reflect_the_host_header(start_serve: Any) -> None:
    proc = start_serve()
    for path in ("/api/v1/models/", "/health/", "/dashboard/static/"):
        resp = httpx.get(proc.url + path, headers={"host": "evil.example"}, timeout=10, follow_redirects=False)
        assert "evil.example" not in resp.headers.get("location", ""), (path, resp.headers)
        assert "evil.example" not in resp.text
        assert resp.status_code in (404, 200), (path, resp.status_code)


def post_chat(url: str, text: str) -> httpx.Response:
    return httpx.post(url + "/api/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": text}]})


def test_upstream_error_bodies_carry_no_credential_and_are_capped(
    start_serve: Any, claude_config_dir: Path
) -> None:
    """An upstream error that echoes the token it was sent (whole, its prefix, its suffix)
    reaches neither the client nor the log; a 20 MB upstream error is neither relayed nor logged
    whole: the client gets a short error in its format, no log line passes the cap."""
    proc = start_serve()

    def access_tokens() -> set[str]:
        doc = json.loads((claude_config_dir / ".credentials.json").read_text())
        return {doc["claudeAiOauth"]["accessToken"]}

    sent = access_tokens()
    anthropic_answer = ask(proc.url, "none", "x [[fake:echo_credential]]")
    openai_answer = post_chat(proc.url, "x [[fake:echo_credential]]")
    sent |= access_tokens()  # the 401 made ccproxy refresh once: the new token was echoed too
    assert anthropic_answer.status_code == 401 and openai_answer.status_code == 401
    assert anthropic_answer.json()["error"]["type"] == "authentication_error"
    assert openai_answer.json()["error"]["type"] == "authentication_error"
    assert "invalid credential" in anthropic_answer.json()["error"]["message"]
    for token in sent:
        for piece in (token, token[:22], token[-12:], token[20:40]):
            for where in (anthropic_answer.text, openai_answer.text, proc.log_text()):
                assert piece not in where, piece

    huge = "x [[fake:huge_error=20000000]]"
    for resp, fmt in ((ask(proc.url, "none", huge), "anthropic"), (post_chat(proc.url, huge), "openai")):
        assert resp.status_code == 500, resp.text[:300]
        assert len(resp.content) < 70_000, len(resp.content)
        error = resp.json()["error"]
        assert (resp.json()["type"] == "error") if fmt == "anthropic" else ("param" in error)
    assert max(len(line) for line in proc.log_text().splitlines()) < 5_000


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server held the connection open for {limit} s") from None
        if not chunk:
            return data, time.monotonic() - started
        data += chunk


def test_half_sent_requests_are_closed_in_bounded_time(start_serve: Any) -> None:
    """Half the headers, or all the headers and half the body, then silence: the server answers
    408 (in the client's format once the path is known) and closes the connection, instead of
    holding it forever."""
    proc = start_serve(env={"SERVER__HEADER_TIMEOUT": "1", "SERVER__BODY_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Ty")
        data, took = read_until_closed(sock, 10)
    assert took < 5 and data.startswith(b"HTTP/1.1 408"), data

    body = json.dumps({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}).encode()
    for path, fmt in (("/api/v1/messages", "anthropic"), ("/api/v1/chat/completions", "openai")):
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
            data, took = read_until_closed(sock, 10)
        assert took < 5, took
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data
        error = json.loads(payload)
        if fmt == "anthropic":
            assert error["type"] == "error" and error["error"]["type"] == "timeout_error", error
        else:
            assert error["error"]["type"] == "timeout" and "body" in error["error"]["message"], error

    # A client that keeps sending, slowly (pauses below the limit, 2.4 s in all), is not cut off.
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(f"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        step = len(body) // 6 + 1
        for i in range(0, len(body), step):
            time.sleep(0.4)  # the slow client's pace, not a wait for the server
            sock.sendall(body[i:i + step])
        data, _ = read_until_closed(sock, 30)
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert "Traceback" not in proc.log_text() and "unhandled" not in proc.log_text()
