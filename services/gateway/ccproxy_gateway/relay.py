"""Where every answer goes out and ends, whatever its format (Anthropic, OpenAI) and mode (API, SDK).

However an answer ends, its :class:`~ccproxy_gateway.usage.Usage` is read once and handed as one
value to billing (the upstream reply's settlement), metrics and the access log, so the three
cannot disagree. Streams go through :func:`ccproxy_core.streaming.relay`, never collected.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ccproxy_core.disconnect import until_disconnect
from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import UpstreamReply
from ccproxy_core.metrics import Metrics, route_label
from ccproxy_core.streaming import RelayResponse, relay
from ccproxy_gateway.access import request_log
from ccproxy_gateway.usage import StreamUsageTap, Usage, usage_from_message

#: Upstream response headers worth passing on to the client.
RELAYED_HEADERS = ("request-id", "retry-after", "anthropic-organization-id", "x-should-retry")


def client_headers(reply: UpstreamReply) -> dict[str, str]:
    out = {k: v for k, v in reply.headers.items() if k in RELAYED_HEADERS or k.startswith("anthropic-ratelimit")}
    out["content-type"] = reply.headers.get("content-type", "application/json")
    return out


class Answers:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def record(self, request: Request, status: int, started: float, usage: Usage, first_byte: float | None) -> None:
        """Metrics for one answered request, and its usage onto its access log."""
        m, tokens, route, access = self.metrics, usage.tokens, route_label(request.scope), request_log(request)
        cost = tokens.cost()
        key = access.draft.key_id if access is not None else ""
        if access is not None:
            access.set_usage(tokens, cost, usage.stop_reason)
            access.first_token = usage.first_token
            if usage.error_type:
                access.draft.error_type = usage.error_type
        m.requests.labels(m.service, route, str(status)).inc()
        m.latency.labels(m.service, route, str(status)).observe(time.perf_counter() - started)
        if first_byte is not None:
            m.first_byte.labels(m.service, route).observe(first_byte)
        if tokens.model:
            for kind, n in tokens.by_kind():
                if n:
                    m.tokens.labels(m.service, tokens.model, key, kind).inc(n)
            if cost:
                m.cost.labels(m.service, tokens.model, key).inc(cost)

    def done(self, request: Request, started: float, usage: Usage, status: int = 200,
             first_byte: float | None = None) -> None:
        """A whole (non-stream) answer was sent: ``first_byte`` defaults to now."""
        first = time.perf_counter() - started if first_byte is None else first_byte
        self.record(request, status, started, usage, first)

    async def read(self, request: Request, reply: UpstreamReply) -> tuple[bytes, Usage]:
        """A whole upstream answer and its usage (none unless 200), settled with billing however
        the read ends (a client gone midway settles nothing spent)."""
        usage = Usage()
        try:
            body = await until_disconnect(request, reply.read())
            if reply.status == 200:
                usage = usage_from_message(body)
            return body, usage
        finally:
            reply.settle(usage.tokens)

    def stream(
        self,
        request: Request,
        started: float,
        frames: AsyncIterator[bytes],
        usage: Callable[[], Usage],
        end: Callable[[Usage], Awaitable[None]],
        headers: dict[str, str],
        status: int = 200,
        feed: Callable[[bytes], None] | None = None,
        on_error: Callable[[ProxyError], bytes] | None = None,
    ) -> Response:
        """Relay ``frames``; when the relay ends, ``end(usage)`` settles and closes the source,
        then the same usage goes to metrics and the access log (which waits for it)."""
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
