"""Streams relayed chunk by chunk, mid-stream errors, client disconnects, timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx2 as httpx
import orjson
import pytest

from tests.e2e_api.conftest import CLIENT_KEY, MODEL, ApiServer, start_api_server
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until

HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}


def stream_body(text: str) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": 500, "stream": True, "messages": [{"role": "user", "content": text}]}


def events_of(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, line[6:]


def test_stream_relayed_chunk_by_chunk(api: ApiServer) -> None:
    """The client holds the first event while the upstream, held after it, has sent nothing more."""
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", api.url + "/api/v1/messages",
        json=stream_body("one two three four five six seven eight [[fake:hold]]"), headers=HEADERS,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        request_id = resp.headers["request-id"]
        events = events_of(resp.iter_lines())
        first = next(events)
        assert first[0] == "message_start"
        at_first = api.fake.request(request_id)
        api.fake.release(request_id)
        rest = list(events)
    assert at_first["outcome"] == "streaming"
    assert at_first["events_sent"] == 1 < at_first["events_total"], at_first
    assert rest[-1][0] == "message_stop"
    done = api.fake.request(request_id)
    assert done["outcome"] == "completed" and done["events_sent"] == done["events_total"]
    # Every event the upstream sent reached the client, pings included, in order.
    names = [first[0]] + [name for name, _ in rest]
    assert names.count("ping") == 2 and names.index("ping") == 1
    assert len(names) == done["events_total"]


def test_midstream_error_reaches_client(api: ApiServer) -> None:
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", api.url + "/api/v1/messages",
        json=stream_body("hello [[fake:midstream_error]]"), headers=HEADERS,
    ) as resp:
        assert resp.status_code == 200
        events = list(events_of(resp.iter_lines()))
    assert [e for e, _ in events][:2] == ["message_start", "ping"]
    name, data = events[-1]
    assert name == "error"
    assert orjson.loads(data) == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(anthropic.APIStatusError) as caught, api.client().messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "x [[fake:midstream_error]]"}]
    ) as stream:
        for _ in stream:
            pass
    assert "overloaded" in str(caught.value).lower()


def test_client_disconnect_cancels_upstream_stream(api: ApiServer) -> None:
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", api.url + "/api/v1/messages",
        json=stream_body("a b c d e f [[fake:slow=0.2]]"), headers=HEADERS,
    ) as resp:
        request_id = resp.headers["request-id"]
        assert next(events_of(resp.iter_lines()))[0] == "message_start"
    # The client closed its connection after the first event.
    record = wait_until(
        lambda: (r := api.fake.request(request_id))["outcome"] == "disconnected" and r,
        timeout=5, message="the upstream request to be cancelled",
    )
    assert record["events_sent"] < record["events_total"]


def test_client_disconnect_cancels_pending_upstream_request(api: ApiServer) -> None:
    """A client that gives up before the upstream answered: the upstream call is closed too."""
    marker = f"hang-{time.monotonic_ns()}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(api.url + "/api/v1/messages", headers=HEADERS, timeout=httpx.Timeout(30, read=0.8), json={
            "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": f"{marker} [[fake:hang]]"}],
        })

    def ours() -> dict[str, object] | None:
        for r in api.fake.requests(token=api.access_token):
            if marker in str(r["body"]) and r["outcome"] == "disconnected":
                return r
        return None

    wait_until(ours, timeout=5, message="the fake to see ccproxy close the hanging request")


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, deployment: str
              ) -> Iterator[ApiServer]:
    server = start_api_server(tmp_path_factory.mktemp("impatient"), fake_upstream,
                              env={"ANTHROPIC__READ_TIMEOUT": "1", "ANTHROPIC__STREAM_IDLE_TIMEOUT": "1"},
                              deployment=deployment)
    try:
        yield server
    finally:
        server.proc.stop()


def test_upstream_timeout_gives_504(impatient: ApiServer) -> None:
    started = time.monotonic()
    resp = httpx.post(impatient.url + "/api/v1/messages", headers=HEADERS, timeout=30, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "wait [[fake:hang]]"}],
    })
    assert resp.status_code == 504
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == "timeout_error"
    assert time.monotonic() - started < 10
    with pytest.raises(anthropic.APIStatusError) as caught:
        impatient.client().messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "wait [[fake:hang]]"}])
    assert caught.value.status_code == 504


def test_stalled_stream_ends_with_error_event(impatient: ApiServer) -> None:
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", impatient.url + "/api/v1/messages", json=stream_body("x [[fake:stall]]"), headers=HEADERS,
    ) as resp:
        assert resp.status_code == 200
        events = list(events_of(resp.iter_lines()))
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error"
    assert orjson.loads(events[-1][1])["error"]["type"] == "timeout_error"


def test_slow_but_steady_stream_is_not_cut(impatient: ApiServer) -> None:
    """Read timeout applies per gap, not to the whole stream: 0.4 s gaps, 1 s timeout, ~4.5 s total."""
    with impatient.client().messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "a b c d [[fake:slow=0.4]]"}]
    ) as stream:
        text = stream.get_final_text()
    assert text == "Echo: a b c d"
