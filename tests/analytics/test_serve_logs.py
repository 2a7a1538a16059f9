"""``ccproxy serve``: every client request lands in the embedded access log (chDB), and the log
API answers over it. Real process, real HTTP, the official SDK as the client, the fake upstream.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from tests.support.process import Proc, wait_until

TOKEN = "cc-test-token-0123456789abcdef"
HEADERS = {"x-api-key": TOKEN}
MODEL = "claude-sonnet-4-5"


def get(proc: Proc, path: str, **params: Any) -> Any:
    resp = httpx.get(proc.url + path, params=params, headers=HEADERS, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def logged(proc: Proc, n: int, **params: Any) -> list[dict[str, Any]]:
    """Poll /logs/query until ``n`` requests are in the log."""
    def enough() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = get(proc, "/logs/query", limit=1000, **params)["data"]
        return rows if len(rows) >= n else None

    return wait_until(enough, timeout=20, interval=0.1, message=f"{n} requests in the access log")


@pytest.fixture
def serve(start_serve: Callable[..., Proc], tmp_path: Path) -> Proc:
    return start_serve(env={
        "SECURITY__AUTH_TOKEN": TOKEN,
        "ANALYTICS__BATCH_SECONDS": "0.1",
        "DATA_DIR": str(tmp_path / "data"),
    })


def test_every_request_is_logged_with_its_facts(serve: Proc, fake_upstream: Any) -> None:
    client = anthropic.Anthropic(base_url=serve.url + "/api", api_key=TOKEN, max_retries=0)
    msg = [{"role": "user", "content": "hello"}]

    ok = client.messages.with_raw_response.create(model=MODEL, max_tokens=50, messages=msg)
    ok_id = ok.headers["request-id"]
    ok_usage = ok.parse().usage
    with client.messages.stream(model=MODEL, max_tokens=50, messages=msg) as stream:
        text = "".join(stream.text_stream)
        streamed = stream.get_final_message()
    assert text
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model=MODEL, max_tokens=50,
                                    messages=[{"role": "user", "content": "x [[fake:midstream_error]]"}]) as s:
            for _ in s.text_stream:
                pass
    # A stream the client abandons after its first bytes.
    with httpx.stream("POST", serve.url + "/api/v1/messages", headers=HEADERS | {"anthropic-version": "2023-06-01"},
                      json={"model": MODEL, "max_tokens": 50, "stream": True,
                            "messages": [{"role": "user", "content": "x [[fake:slow=0.3]]"}]}, timeout=10) as resp:
        next(resp.iter_raw())
    # A non-stream request the client gives up on while the upstream hangs.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(serve.url + "/api/v1/messages", headers=HEADERS | {"anthropic-version": "2023-06-01"},
                   json={"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "[[fake:hang]]"}]},
                   timeout=0.5)
    # Refused by client authentication (never reaches the upstream).
    refused = httpx.post(serve.url + "/api/v1/messages", headers={"x-api-key": "wrong-key-9876543210"},
                         json={"model": MODEL, "max_tokens": 5, "messages": msg})
    assert refused.status_code == 401
    # Last: a spent quota puts the (only) account in cooldown.
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=MODEL, max_tokens=50,
                               messages=[{"role": "user", "content": "x [[fake:error=429]]"}])
    limited_id = limited.value.response.headers["request-id"]

    rows = logged(serve, 7)
    assert len(rows) == 7
    assert len({r["request_id"] for r in rows}) == 7
    by_upstream = {r["upstream_request_id"]: r for r in rows if r["upstream_request_id"]}

    first = by_upstream[ok_id]
    assert first["status"] == 200 and first["outcome"] == "ok" and first["stream"] is False
    assert first["key_id"] == "default" and first["mode"] == "api" and first["endpoint"] == "/api/v1/messages"
    assert first["client_format"] == "anthropic" and first["account"]
    assert first["model_requested"] == MODEL and first["model_used"]
    assert first["input_tokens"] == ok_usage.input_tokens and first["output_tokens"] == ok_usage.output_tokens
    assert first["cost_usd"] > 0
    assert first["user_agent"].startswith("Anthropic/Python") and first["client_addr"] == "127.0.0.1"
    assert first["quota_status"] == "allowed" and first["quota_5h_utilization"] is not None
    assert first["started_at"] <= first["first_byte_at"] <= first["finished_at"]
    assert first["ttft_ms"] is None and first["duration_ms"] > 0

    stream_row = next(r for r in rows if r["stream"] and r["outcome"] == "ok")
    assert stream_row["output_tokens"] == streamed.usage.output_tokens
    assert stream_row["ttft_ms"] is not None and 0 < stream_row["ttft_ms"] <= stream_row["duration_ms"]
    assert stream_row["stop_reason"] == "end_turn"

    rate = by_upstream[limited_id]
    assert (rate["status"], rate["outcome"], rate["error_type"]) == (429, "error", "rate_limit_error")
    assert rate["retry_after_s"] is not None and rate["quota_status"]

    midstream = next(r for r in rows if r["stream"] and r["status"] == 200 and r["error_type"])
    assert midstream["outcome"] == "error" and midstream["error_type"] == "overloaded_error"

    cancelled = [r for r in rows if r["outcome"] == "cancelled"]
    assert len(cancelled) == 2
    assert {r["stream"] for r in cancelled} == {True, False}
    assert next(r for r in cancelled if not r["stream"])["status"] == 499

    denied = next(r for r in rows if r["status"] == 401)
    assert denied["key_id"] == "anonymous" and denied["error_type"] == "authentication_error"

    # Nothing secret anywhere in what the log API returns.
    everything = json.dumps(rows)
    assert TOKEN not in everything and "wrong-key-9876543210" not in everything
    assert fake_upstream.credentials()["accessToken"][:12] not in everything


def test_query_filters_cursor_and_usage(serve: Proc) -> None:
    client = anthropic.Anthropic(base_url=serve.url + "/api", api_key=TOKEN, max_retries=0)
    totals = {"input": 0, "output": 0}
    for n in range(5):
        r = client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"q{n}"}])
        totals["input"] += r.usage.input_tokens
        totals["output"] += r.usage.output_tokens
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "[[fake:error=529]]"}])
    rows = logged(serve, 6)

    # Filters
    assert len(get(serve, "/logs/query", status="529")["data"]) == 1
    assert len(get(serve, "/logs/query", status="5xx")["data"]) == 1
    assert len(get(serve, "/logs/query", outcome="ok")["data"]) == 5
    assert len(get(serve, "/logs/query", key="default")["data"]) == 6
    assert get(serve, "/logs/query", key="someone-else")["data"] == []
    assert get(serve, "/logs/query", mode="sdk")["data"] == []
    assert len(get(serve, "/logs/query", model=MODEL)["data"]) == 6
    assert get(serve, "/logs/query", account="no-such-account")["data"] == []
    assert get(serve, "/logs/query", until="2000-01-01T00:00:00Z")["data"] == []

    # Keyset pagination: pages of 2, newest first, every row exactly once.
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = get(serve, "/logs/query", **params)
        seen += [r["request_id"] for r in body["data"]]
        cursor = body["next_cursor"]
        assert body["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert seen == [r["request_id"] for r in rows]

    # Usage totals by key and model, per hour.
    usage = get(serve, "/logs/usage", group_by="key,model", bucket="hour")["data"]
    assert sum(u["requests"] for u in usage) == 6
    assert sum(u["input_tokens"] for u in usage) == totals["input"]
    assert sum(u["output_tokens"] for u in usage) == totals["output"]
    assert sum(u["errors"] for u in usage) == 1
    assert {u["key_id"] for u in usage} == {"default"}
    assert all(u["bucket"].endswith(":00:00Z") for u in usage)
    assert sum(u["cost_usd"] for u in usage) == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-6)

    # Bad input is a 400, not a crash.
    for bad in ({"limit": "0"}, {"status": "abc"}, {"cursor": "!!"}, {"since": "yesterday"}):
        resp = httpx.get(serve.url + "/logs/query", params=bad, headers=HEADERS)
        assert resp.status_code == 400, (bad, resp.text)
    assert httpx.get(serve.url + "/logs/usage", params={"group_by": "secret"}, headers=HEADERS).status_code == 400


def test_a_request_to_no_endpoint_under_the_api_is_logged_under_its_path(serve: Proc) -> None:
    """A client aimed at a wrong endpoint shows up in the log (its path, 404, its format); a path
    outside the client API does not."""
    assert httpx.get(serve.url + "/not-an-api", headers=HEADERS, timeout=10).status_code == 404
    wrong = httpx.post(serve.url + "/api/v1/chat/complete", headers=HEADERS, json={}, timeout=10)
    assert wrong.status_code == 404
    legacy = httpx.post(serve.url + "/sdk/v2/chat/completions", headers=HEADERS, json={}, timeout=10)
    assert legacy.status_code == 404
    rows = {row["endpoint"]: row for row in logged(serve, 2)}
    assert set(rows) == {"/api/v1/chat/complete", "/sdk/v2/chat/completions"}
    assert (rows["/api/v1/chat/complete"]["status"], rows["/api/v1/chat/complete"]["mode"]) == (404, "api")
    sdk = rows["/sdk/v2/chat/completions"]
    assert (sdk["status"], sdk["mode"], sdk["client_format"]) == (404, "sdk", "openai-chat")


def test_log_api_needs_the_client_key(serve: Proc) -> None:
    for path in ("/logs/query", "/logs/usage", "/logs/status", "/logs/stream"):
        resp = httpx.get(serve.url + path, headers={"x-api-key": "nope-nope-nope"})
        assert resp.status_code == 401, path
        assert httpx.get(serve.url + path).status_code == 401, path


def test_stream_shows_requests_as_they_finish(serve: Proc) -> None:
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", serve.url + "/logs/stream", headers=HEADERS, timeout=30) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in resp.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name == "request":
                    events.put(json.loads(line[6:]))
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert connected.wait(10)
    client = anthropic.Anthropic(base_url=serve.url + "/api", api_key=TOKEN, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    event = events.get(timeout=10)
    assert event["upstream_request_id"] == raw.headers["request-id"]
    assert event["status"] == 200 and event["key_id"] == "default"


def test_status_metrics_and_restart_keep_the_log(serve: Proc, start_serve: Callable[..., Proc], tmp_path: Path) -> None:
    client = anthropic.Anthropic(base_url=serve.url + "/api", api_key=TOKEN, max_retries=0)
    client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    logged(serve, 1)
    status = get(serve, "/logs/status")
    assert status["status"] == "ok" and status["backend"] == "chdb"
    assert status["clickhouse"]["available"] and status["consumer"]["inserted"] >= 1
    assert status["consumer"]["backlog"] == 0

    metrics = httpx.get(serve.url + "/metrics").text
    assert 'ccproxy_tokens_total{key="default",kind="input"' in metrics
    assert "ccproxy_cost_usd_total{" in metrics and "ccproxy_access_log_backlog{" in metrics
    assert TOKEN not in metrics

    # The data directory is the log's home: a new process on it sees the old requests.
    serve.stop()
    again = start_serve(env={"SECURITY__AUTH_TOKEN": TOKEN, "DATA_DIR": str(tmp_path / "data")})
    assert len(get(again, "/logs/query")["data"]) == 1
