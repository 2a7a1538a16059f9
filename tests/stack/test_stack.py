"""The stack as separate OS processes behind the real Traefik with the real Redis: what only the
stack has (internal endpoints and their secret, per-service health and metrics, the token cache,
a service dying mid-stream). The API-mode client tests themselves run against the stack too
(tests/e2e_api, parametrized over serve and stack)."""

from __future__ import annotations

import re

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
import redis as redis_sync

from ccproxy_core.internal import INTERNAL_SECRET_HEADER
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.stack import StackProc

MODEL = "claude-sonnet-4-6"
CLIENT_KEY = "sk-ant-api03-client-key-that-must-not-leave-ccproxy"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
INTERNAL_PATHS = [
    "/internal/pick", "/internal/status", "/internal/forward/v1/messages",
    "//internal/pick", "/api/../internal/pick", "/%69nternal/pick", "/INTERNAL/pick", "/internal",
]


def client(stack: StackProc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url + "/api", api_key=CLIENT_KEY, max_retries=0)


def test_messages_through_traefik(stack: StackProc, fake_upstream: FakeUpstream) -> None:
    answer = client(stack).messages.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "through the stack"}])
    assert answer.content[0].text == "Echo: through the stack"  # type: ignore[union-attr]
    seen = fake_upstream.request(answer._request_id)  # type: ignore[arg-type]
    # The upstream saw the subscription's token, not the client's key, nor the internal secret.
    assert seen["auth"]["kind"] == "oauth"
    assert stack.internal_secret not in orjson.dumps(seen).decode()
    assert CLIENT_KEY not in orjson.dumps(seen).decode()


def test_streaming_through_traefik(stack: StackProc) -> None:
    with client(stack).messages.stream(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "a b c [[fake:slow=0.05]]"}]
    ) as stream:
        kinds = [event.type for event in stream]
        text = stream.get_final_text()
    assert text == "Echo: a b c"
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


@pytest.mark.parametrize("path", INTERNAL_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_no_internal_endpoint_through_traefik(stack: StackProc, path: str, method: str) -> None:
    """Even with the right secret, Traefik never routes to an internal endpoint."""
    headers = {INTERNAL_SECRET_HEADER: stack.internal_secret, "content-type": "application/json"}
    with httpx.Client(timeout=10) as http:
        resp = http.request(method, httpx.URL(stack.url + path), headers=headers, content=b"{}")
    assert resp.status_code == 404, (path, resp.status_code, resp.text[:200])
    assert "secret" not in resp.text.lower() and "access" not in resp.text.lower()


@pytest.mark.parametrize(("service", "path", "method"), [
    ("auth", "/internal/accounts", "GET"),
    ("auth", "/internal/pick", "POST"),
    ("auth", "/internal/status", "GET"),
    ("api-forwarder", "/internal/forward/v1/messages", "POST"),
])
@pytest.mark.parametrize("secret", [None, "wrong-secret-of-the-right-length"])
def test_internal_endpoints_need_the_secret(stack: StackProc, service: str, path: str, method: str,
                                            secret: str | None) -> None:
    headers = {INTERNAL_SECRET_HEADER: secret} if secret else {}
    body = orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    resp = httpx.request(method, stack.service_url(service) + path, headers=headers, content=body, timeout=10)
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    assert "accessToken" not in resp.text and "secret" not in resp.json().get("kind", "")


def test_internal_pick_with_the_secret(stack: StackProc) -> None:
    resp = httpx.post(stack.service_url("auth") + "/internal/pick", content=b"{}",
                      headers={INTERNAL_SECRET_HEADER: stack.internal_secret}, timeout=10)
    assert resp.status_code == 200
    assert resp.json()["kind"] == "oauth" and resp.json()["secret"]


def test_health_and_metrics_of_every_service(stack: StackProc) -> None:
    for name in ("auth", "api-forwarder", "gateway"):
        health = httpx.get(stack.service_url(name) + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["ready"] is True, (name, health.text)
        metrics = httpx.get(stack.service_url(name) + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "ccproxy_requests_total" in metrics.text
    public = httpx.get(stack.url + "/health", timeout=10).json()
    assert public["ready"] is True and public["checks"]["credentials"]["kind"] == "oauth"


def test_gateway_readiness_follows_auth(stack: StackProc) -> None:
    """Auth down: the gateway is alive but not ready, and requests fail cleanly; auth back: ready."""
    stack.kill("auth")
    try:
        health = httpx.get(stack.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["ready"] is False
        assert "auth service is unreachable" in health.json()["checks"]["credentials"]["detail"]
    finally:
        stack.start("auth")
    wait_until(lambda: httpx.get(stack.url + "/health", timeout=5).json()["ready"], timeout=10,
               message="the gateway to be ready again")


def test_forwarder_caches_the_token(stack: StackProc) -> None:
    """The forwarder fetches a token from auth once, not once per request."""
    def fetches() -> float:
        text = httpx.get(stack.service_url("api-forwarder") + "/metrics", timeout=10).text
        return float(re.search(r"^ccproxy_auth_token_fetches (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    client(stack).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "warm"}])
    before = fetches()
    assert before >= 1
    for i in range(5):
        client(stack).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": f"{i}"}])
    assert fetches() == before


def test_forwarder_killed_mid_stream(stack: StackProc, fake_upstream: FakeUpstream) -> None:
    """The client gets a clean error event, not a hang or a torn stream; after the forwarder
    restarts, the next request succeeds."""
    with httpx.Client(timeout=30) as http, http.stream(
        "POST", stack.url + "/api/v1/messages", headers=HEADERS,
        json={"model": MODEL, "max_tokens": 200, "stream": True,
              "messages": [{"role": "user", "content": "one two three four five six [[fake:hold]]"}]},
    ) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(lines) == "event: message_start"
        stack.kill("api-forwarder")
        rest = list(lines)
    events = [line[7:] for line in rest if line.startswith("event: ")]
    assert events[-1] == "error", rest
    error = orjson.loads(rest[rest.index("event: error") + 1][6:])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "api-forwarder" in error["error"]["message"]
    assert "message_stop" not in events

    # While it is down: a clean 502 in the client's format, quickly.
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(stack).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]

    stack.start("api-forwarder")
    answer = client(stack).messages.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "after restart"}])
    assert answer.content[0].text == "Echo: after restart"  # type: ignore[union-attr]


def test_stored_responses_survive_a_gateway_restart(stack: StackProc, fake_upstream: FakeUpstream) -> None:
    """The Responses API's store is in the stack's Redis, under the stack's key prefix: a
    response made before the gateway restarts is continued after it."""
    def responses() -> openai.OpenAI:
        return openai.OpenAI(base_url=stack.url + "/api/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)

    first = responses().responses.create(model="gpt-5", input="before the restart")
    stored = redis_sync.Redis.from_url(stack.redis_url).keys(f"{stack.key_prefix}responses:*:r:{first.id}")
    assert len(stored) == 1
    stack.start("gateway", timeout=60)
    raw = responses().responses.with_raw_response.create(
        model="gpt-5", input="after the restart", previous_response_id=first.id)
    seen = fake_upstream.request(raw.headers["x-request-id"])["body"]["messages"]
    assert [(m["role"], m["content"][0]["text"]) for m in seen] == [
        ("user", "before the restart"), ("assistant", "Echo: before the restart"), ("user", "after the restart")]
    assert responses().responses.retrieve(first.id).output_text == "Echo: before the restart"
