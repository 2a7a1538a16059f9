"""Issue 13, observability and information leaks: what anonymous callers, members, a Redis
outage, a dead refresh token, a slow client and a misbehaving upstream can make ``ccproxy serve``
say, hold, count or log. Every test drives real processes (``ccproxy serve``, the fake upstream,
a redis-server of the test's own where Redis must fail)."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.stack.test_redis_outage import OwnRedis
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.serve import run_ccproxy, write_credentials

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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    server = OwnRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
