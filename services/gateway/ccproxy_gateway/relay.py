"""Where every answer goes out and ends, whatever its format and mode. Its :class:`Usage` is read
once (the stream tap below, the OpenAI translators, a whole message, the SDK run's summary) and
handed as one value to billing, metrics and the access log, so the three cannot disagree."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import UpstreamReply
from ccproxy_core.metrics import Metrics, route_label
from ccproxy_core.models import TokenUsage
from ccproxy_core.sse import SSEDecoder
from ccproxy_core.streaming import RelayResponse, error_event, relay, until_disconnect
from ccproxy_gateway.access import request_log


@dataclass(slots=True)
class Usage:
    tokens: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None
    error_type: str | None = None
    first_token: float | None = None  # time.perf_counter() when the first content token passed

    def read(self, name: str, data: dict[str, Any]) -> None:
        if name == "content_block_delta":
            if self.first_token is None:
                self.first_token = time.perf_counter()
        elif name == "message_start":
            message = data.get("message") or {}
            self.tokens.model = message.get("model") or self.tokens.model
            self.tokens.add(message.get("usage"))
        elif name == "message_delta":
            self.tokens.add(data.get("usage"))
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
        elif name == "error":
            self.error_type = (data.get("error") or {}).get("type", "error")


#: The ``event:`` lines of what the tap reads (message_start, message_delta, error), with and
#: without the optional space: a chunk holding none of them is not decoded.
_WANTED = (b"event: message_", b"event:message_", b"event: error", b"event:error")
_FIRST_TOKEN = (b"event: content_block_delta", b"event:content_block_delta")
_READ = frozenset({"message_start", "message_delta", "error"})


class StreamUsageTap:
    """The :class:`Usage` of a relayed Anthropic stream, read from its raw chunks."""

    def __init__(self) -> None:
        self.usage = Usage()
        self._decoder = SSEDecoder()

    def _skippable(self, chunk: bytes) -> bool:
        """Whole events the tap does not need (nearly every content delta): a few substring searches
        instead of a line-by-line parse."""
        if not chunk.endswith(b"\n\n") or not self._decoder.idle:
            return False
        a, b, c, d = _WANTED
        if a in chunk or b in chunk or c in chunk or d in chunk:
            return False
        if self.usage.first_token is None:
            return _FIRST_TOKEN[0] not in chunk and _FIRST_TOKEN[1] not in chunk
        return True

    def feed(self, chunk: bytes) -> None:
        if self._skippable(chunk):
            return
        for event in self._decoder.feed(chunk):
            if event.event == "content_block_delta":
                self.usage.read(event.event, {})
            elif event.event in _READ:
                try:
                    data = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict):
                    self.usage.read(event.event, data)

    def failed(self, exc: ProxyError) -> bytes:
        self.usage.error_type = exc.error_type
        return error_event(exc)


RELAYED_HEADERS = ("request-id", "retry-after", "anthropic-organization-id", "x-should-retry")


def client_headers(reply: UpstreamReply) -> dict[str, str]:
    out = {k: v for k, v in reply.headers.items() if k in RELAYED_HEADERS or k.startswith("anthropic-ratelimit")}
    out["content-type"] = reply.headers.get("content-type", "application/json")
    return out


class Answers:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def record(self, request: Request, status: int, started: float, usage: Usage, first_byte: float | None) -> None:
        """An answer's usage and times to the access log and metrics (``first_byte``: seconds in)."""
        m, tokens, route, access = self.metrics, usage.tokens, route_label(request.scope), request_log(request)
        cost = tokens.cost()
        key = access.draft.key_id if access is not None else ""
        if access is not None:
            access.set_usage(tokens, cost, usage.stop_reason)
            access.first_token = usage.first_token
            if usage.error_type:
                access.draft.error_type = usage.error_type
        m.answered(route, status, started, first_byte)
        if tokens.model:
            for kind, n in tokens.by_kind():
                if n:
                    m.tokens.labels(m.service, tokens.model, key, kind).inc(n)
            if cost:
                m.cost.labels(m.service, tokens.model, key).inc(cost)

    async def read(self, request: Request, reply: UpstreamReply) -> tuple[bytes, dict[str, Any] | None, Usage]:
        """A whole upstream answer, its message (a 200's, if JSON) and usage, settled however the read
        ends (a client gone midway settles nothing spent)."""
        usage, message = Usage(), None
        try:
            body = await until_disconnect(request, reply.read())
            if reply.status == 200:
                with contextlib.suppress(orjson.JSONDecodeError):
                    message = orjson.loads(body)
            if not isinstance(message, dict):
                return body, None, usage
            usage.tokens.model = message.get("model") or ""
            usage.tokens.add(message.get("usage"))
            usage.stop_reason = message.get("stop_reason")
            return body, message, usage
        finally:
            reply.settle(usage.tokens)

    def stream(
        self, request: Request, started: float, frames: AsyncIterator[bytes], usage: Callable[[], Usage],
        end: Callable[[Usage], Awaitable[None]], headers: dict[str, str], status: int = 200,
        feed: Callable[[bytes], None] | None = None, on_error: Callable[[ProxyError], bytes] | None = None,
    ) -> Response:
        """Relay ``frames``; when it ends, ``end(usage)`` settles and closes the source, then the
        same usage goes to metrics and the access log (which waits for it)."""
        m, access = self.metrics, request_log(request)
        m.active_streams.labels(m.service).inc()
        if access is not None:
            access.hold()

        async def on_end(first_byte: float | None) -> None:
            answer = usage()
            try:
                await end(answer)
            finally:
                m.active_streams.labels(m.service).dec()
                self.record(request, status, started, answer, first_byte)
                if access is not None:
                    access.release()

        return RelayResponse(relay(frames, started, on_end, feed, on_error), status_code=status, headers=headers)

    def relay_upstream(
        self, request: Request, started: float, reply: UpstreamReply, frames: AsyncIterator[bytes] | None = None,
        usage: Callable[[], Usage] | None = None, headers: dict[str, str] | None = None,
    ) -> Response:
        """An upstream stream: as-is (its usage tapped from the bytes), or ``frames`` translated
        from it with ``usage`` read by the translator."""
        async def end(answer: Usage) -> None:
            reply.settle(answer.tokens)
            await reply.aclose()

        headers = headers or client_headers(reply)
        if frames is not None and usage is not None:
            return self.stream(request, started, frames, usage, end, headers, reply.status)
        tap = StreamUsageTap()
        return self.stream(request, started, aiter(reply), lambda: tap.usage, end, headers, reply.status,
                           feed=tap.feed, on_error=tap.failed)
