"""Redis going away: requests that need it fail fast with a clear 503 in the client's format, and
the services recover by themselves when it is back. The Redis here is a redis-server of the
test's own on a free port (the shared one on 6379 must never be restarted)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.stack.conftest import config_dir_with
from tests.support.fake import FakeUpstream
from tests.support.redis_server import OwnRedis
from tests.support.stack import StackProc, launch_stack

MODEL = "claude-sonnet-4-6"
CLIENT_KEY = "sk-ant-api03-client-key-that-must-not-leave-ccproxy"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


def start(tmp_path: Path, fake: FakeUpstream, redis: OwnRedis) -> tuple[StackProc, dict[str, object]]:
    """A stack whose token is expired, so the first request needs Redis (the refresh lock)."""
    oauth = fake.credentials(expired=True)
    stack = launch_stack(tmp_path / "run", fake_url=fake.url, claude_config_dir=config_dir_with(tmp_path, oauth),
                         redis_url=redis.url, env={"REDIS__SOCKET_TIMEOUT": "1", "REDIS__CONNECT_TIMEOUT": "1"})
    return stack, oauth


def ask(stack: StackProc, text: str) -> httpx.Response:
    return httpx.post(stack.url + "/api/v1/messages", timeout=30, headers={"x-api-key": CLIENT_KEY}, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": text}]})


def assert_clear_503(resp: httpx.Response, started: float, limit: float) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "api_error"
    assert "Redis is unavailable" in resp.json()["error"]["message"]
    assert resp.headers.get("retry-after")
    assert time.monotonic() - started < limit


def test_redis_down_then_back(tmp_path: Path, fake_upstream: FakeUpstream, own_redis: OwnRedis) -> None:
    stack, oauth = start(tmp_path, fake_upstream, own_redis)
    try:
        own_redis.stop()
        started = time.monotonic()
        assert_clear_503(ask(stack, "redis is down"), started, limit=5)
        # The SDK sees the same, as an APIStatusError it can retry on.
        with pytest.raises(anthropic.APIStatusError) as caught:
            anthropic.Anthropic(base_url=stack.url + "/api", api_key=CLIENT_KEY, max_retries=0).messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert caught.value.status_code == 503
        auth_health = httpx.get(stack.service_url("auth") + "/health", timeout=10).json()
        assert auth_health["ready"] is False and auth_health["checks"]["redis"]["available"] is False
        assert not fake_upstream.token_calls(str(oauth["refreshToken"]))  # no refresh without the lock

        own_redis.start()  # the same port, as after a restart; no service is restarted
        resp = ask(stack, "redis is back")
        assert resp.status_code == 200, resp.text
        assert resp.json()["content"][0]["text"] == "Echo: redis is back"
        assert len(fake_upstream.token_calls(str(oauth["refreshToken"]))) == 1
        assert httpx.get(stack.service_url("auth") + "/health", timeout=10).json()["ready"] is True
    finally:
        stack.stop()


def test_redis_hanging_is_a_503_not_a_hang(tmp_path: Path, fake_upstream: FakeUpstream,
                                           own_redis: OwnRedis) -> None:
    """A Redis that accepts connections but never answers (frozen): the timeout turns it into a 503."""
    stack, _ = start(tmp_path, fake_upstream, own_redis)
    try:
        own_redis.freeze()
        started = time.monotonic()
        assert_clear_503(ask(stack, "redis is frozen"), started, limit=8)
        own_redis.thaw()
        resp = ask(stack, "redis thawed")
        assert resp.status_code == 200, resp.text
    finally:
        own_redis.thaw()
        stack.stop()
