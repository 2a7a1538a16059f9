"""Fast in-process tests of the gateway's parts: the relay, one usage per answer for billing,
metrics and the access log, and the access-log record. No process is started: the gateway app
runs on httpx's ASGI transport, the forwarder and the key authority are in-process objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from ccproxy_core.access_log import AccessLogEmitter, AccessLogEvent, RequestLog
from ccproxy_core.client_keys import Admission, KeyInfo, Settlement
from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import ForwardRequest, UpstreamReply
from ccproxy_core.identity import ANONYMOUS
from ccproxy_core.metrics import Metrics
from ccproxy_core.models import TokenUsage
from ccproxy_core.settings import Settings
from ccproxy_core.sse import encode_event
from ccproxy_core.streaming import relay
from ccproxy_core.tokens import CredentialStatus
from ccproxy_gateway.app import Gateway, create_app

MODEL = "claude-sonnet-4-5"
KEY = "ccp_unit_test_key"
#: What the fake upstream answers with: every token kind non-zero and distinct.
SPENT = TokenUsage(model=MODEL, input_tokens=11, output_tokens=7, cache_read_tokens=5, cache_write_tokens=3)


def sse_answer() -> list[bytes]:
    start = {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "stop_reason": None, "usage": {"input_tokens": SPENT.input_tokens, "output_tokens": 1,
                                       "cache_read_input_tokens": SPENT.cache_read_tokens,
                                       "cache_creation_input_tokens": SPENT.cache_write_tokens}}}
    return [
        encode_event("message_start", orjson.dumps(start)),
        encode_event("content_block_start", orjson.dumps(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        encode_event("content_block_delta", orjson.dumps(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})),
        encode_event("content_block_stop", orjson.dumps({"type": "content_block_stop", "index": 0})),
        encode_event("message_delta", orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                                    "usage": {"output_tokens": SPENT.output_tokens}})),
        encode_event("message_stop", orjson.dumps({"type": "message_stop"})),
    ]


def json_answer() -> bytes:
    return orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "hi"}], "usage": SPENT.anthropic(),
    })


class FakeForwarder:
    """Answers every request at once, as a stream when the body asks for one."""

    def __init__(self) -> None:
        self.closed = 0

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        stream = request.body.get("stream") is True
        chunks = sse_answer() if stream else [json_answer()]

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        async def close() -> None:
            self.closed += 1

        ctype = "text/event-stream" if stream else "application/json"
        return UpstreamReply(200, {"content-type": ctype, "request-id": "req_up"}, body(), close, account="acct")


class FakeKeys:
    """One limited key; records what each admission was settled with."""

    def __init__(self) -> None:
        self.key = KeyInfo(id="key_1", name="alice", rpm=1000)
        self.settled: list[TokenUsage] = []

    async def lookup(self, presented: str) -> KeyInfo | None:
        return self.key if presented == KEY else None

    async def any_keys(self, fresh: bool = False) -> bool:
        return True

    async def admit(self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int) -> Admission:
        return Admission(key_id=key.id, key_name=key.name)

    async def settle(self, admission: Admission, usage: TokenUsage) -> Settlement:
        self.settled.append(usage)
        return Settlement()


class Events(AccessLogEmitter):
    """An emitter that keeps the events it is handed."""

    def __init__(self) -> None:
        super().__init__(None, "unit")
        self.events: list[AccessLogEvent] = []

    def emit(self, event: AccessLogEvent) -> None:
        self.events.append(event)


async def available() -> CredentialStatus:
    return CredentialStatus(available=True)


@pytest.fixture
def parts() -> tuple[Gateway, FakeKeys, Events]:
    keys, events = FakeKeys(), Events()
    gateway = Gateway(Settings(), FakeForwarder(), available, Metrics("gateway"), events, keys)
    return gateway, keys, events


def metered_tokens(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        "ccproxy_tokens_total", {"service": "gateway", "model": MODEL, "key": "key_1", "kind": kind})
    return value or 0.0


CASES = {
    "anthropic-stream": ("/api/v1/messages", {"stream": True}),
    "anthropic-json": ("/api/v1/messages", {}),
    "openai-chat-stream": ("/api/v1/chat/completions", {"stream": True}),
    "openai-chat-json": ("/api/v1/chat/completions", {}),
    "openai-responses-stream": ("/api/v1/responses", {"stream": True}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_one_usage_reaches_billing_metrics_and_the_access_log(
    parts: tuple[Gateway, FakeKeys, Events], case: str
) -> None:
    gateway, keys, events = parts
    forwarder = gateway.forwarder.inner  # the metered forwarder wraps the fake
    path, extra = CASES[case]
    if path.endswith("/responses"):
        body: dict[str, Any] = {"model": MODEL, "input": "hello", **extra}
    else:
        body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}], **extra}
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        answer = await client.post(path, json=body, headers={"x-api-key": KEY})
    assert answer.status_code == 200, answer.text
    assert gateway.meter is not None
    while gateway.meter.tasks:  # the settlements in flight
        await asyncio.gather(*list(gateway.meter.tasks), return_exceptions=True)

    assert [u.model_dump() for u in keys.settled] == [SPENT.model_dump()]  # billed once, in full
    [event] = events.events
    assert (event.key_id, event.model_used, event.status, event.outcome) == ("key_1", MODEL, 200, "ok")
    assert (event.input_tokens, event.output_tokens, event.cache_read_tokens, event.cache_write_tokens) == (
        SPENT.input_tokens, SPENT.output_tokens, SPENT.cache_read_tokens, SPENT.cache_write_tokens)
    assert event.cost_usd == SPENT.cost() > 0
    for kind, n in SPENT.by_kind():
        assert metered_tokens(gateway.metrics, kind) == n
    cost = gateway.metrics.registry.get_sample_value(
        "ccproxy_cost_usd_total", {"service": "gateway", "model": MODEL, "key": "key_1"})
    assert cost == pytest.approx(SPENT.cost())
    assert (gateway.metrics.registry.get_sample_value("ccproxy_active_streams", {"service": "gateway"}) or 0) == 0
    assert forwarder.closed == 1  # the upstream answer was closed, once
    assert (event.method, event.endpoint) == ("POST", path)


async def test_every_request_gets_its_own_access_log_id(parts: tuple[Gateway, FakeKeys, Events]) -> None:
    """The consumer drops an event whose ``request_id`` it has seen: a shared id loses rows."""
    gateway, _, events = parts
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        for _ in range(3):
            assert (await client.post("/api/v1/messages", json=body, headers={"x-api-key": KEY})).status_code == 200
    ids = [event.request_id for event in events.events]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(i.startswith("req_") for i in ids), ids


async def test_relay_sends_each_chunk_before_the_next_arrives() -> None:
    """A relay that collected the stream would wait forever for the second chunk here."""
    first_seen = asyncio.Event()
    ended: list[float | None] = []

    async def upstream() -> AsyncIterator[bytes]:
        yield b"one"
        await first_seen.wait()  # the next chunk exists only once the first reached the client
        yield b"two"

    async def on_end(first_byte: float | None) -> None:
        ended.append(first_byte)

    fed: list[bytes] = []
    got: list[bytes] = []
    async with asyncio.timeout(5):
        async for chunk in relay(upstream(), time.perf_counter(), on_end, feed=fed.append):
            got.append(chunk)
            first_seen.set()
    assert got == fed == [b"one", b"two"]
    assert len(ended) == 1 and ended[0] is not None and ended[0] >= 0


async def test_relay_turns_a_late_failure_into_an_error_event_and_always_ends() -> None:
    ended: list[float | None] = []

    async def upstream() -> AsyncIterator[bytes]:
        yield b"event: ping\ndata: {}\n\n"
        raise ProxyError(502, "upstream connection lost", "api_error")

    async def on_end(first_byte: float | None) -> None:
        ended.append(first_byte)

    chunks = [c async for c in relay(upstream(), time.perf_counter(), on_end)]
    assert chunks[-1].startswith(b"event: error") and b"upstream connection lost" in chunks[-1]
    assert len(ended) == 1

    # A client gone midway (the consumer stops): the relay still ends, once.
    ended.clear()
    gen = relay(upstream(), time.perf_counter(), on_end)
    assert await gen.__anext__()
    await gen.aclose()
    assert len(ended) == 1


def test_request_log_is_a_draft_of_its_one_event() -> None:
    emitted: list[AccessLogEvent] = []
    log = RequestLog("/api/v1/messages", client_format="anthropic", user_agent="ua", request_id="req_1")
    log.sink = emitted.append
    assert log.draft.key_id == ANONYMOUS.id
    log.set_identity("key_1", "alice")
    log.draft.model_requested = "sonnet"
    log.set_usage(SPENT, stop_reason="end_turn")
    log.set_status(200)
    log.hold()  # a stream still relays: the event waits for it
    log.close()
    assert emitted == []
    log.release()
    [event] = emitted
    assert event.request_id == "req_1" and event.key_id == "key_1" and event.key_name == "alice"
    assert event.model_requested == "sonnet" and event.model_used == MODEL and event.stop_reason == "end_turn"
    assert event.cost_usd == SPENT.cost() and event.outcome == "ok" and event.status == 200
    assert event.finished_at >= event.started_at and event.duration_ms >= 0
    # Round trip through the stream format keeps every field.
    assert AccessLogEvent.from_stream(event.to_stream()) == event
    log.release()
    assert len(emitted) == 1  # never twice


def test_request_log_outcomes() -> None:
    emitted: list[AccessLogEvent] = []
    cancelled = RequestLog("/api/v1/messages")
    cancelled.sink = emitted.append
    cancelled.set_error(499, "client_gone")
    cancelled.set_status(200)  # a cancelled request stays cancelled
    cancelled.close()
    failed = RequestLog("/api/v1/messages")
    failed.sink = emitted.append
    failed.close()  # nothing was sent at all
    assert [(e.status, e.outcome) for e in emitted] == [(499, "cancelled"), (500, "error")]
