"""Relaying the forwarder's answer to the client, chunk by chunk.

A stream is never collected: each chunk is written as soon as it arrives. A client that goes
away cancels the relay, which closes the upstream connection (so the upstream stops too).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response

from ccproxy_core.errors import ProxyError, anthropic_error_body
from ccproxy_core.forwarding import UpstreamReply
from ccproxy_core.sse import encode_event
from ccproxy_core.streaming import RelayResponse
from ccproxy_gateway.usage import StreamUsageTap, Usage, usage_from_message

#: Upstream response headers worth passing on to the client.
RELAYED_HEADERS = ("request-id", "retry-after", "anthropic-organization-id", "x-should-retry")


def client_headers(reply: UpstreamReply) -> dict[str, str]:
    out = {k: v for k, v in reply.headers.items() if k in RELAYED_HEADERS or k.startswith("anthropic-ratelimit")}
    out["content-type"] = reply.headers.get("content-type", "application/json")
    return out


OnDone = Callable[[Usage, float | None], None]


def relay_anthropic(reply: UpstreamReply, started: float, on_done: OnDone) -> Response:
    """The upstream's answer as-is. ``on_done(usage, first_byte_time)`` runs when it ends."""
    if not reply.is_stream:
        raise AssertionError("use relay_body for non-stream answers")
    tap = StreamUsageTap()

    async def body() -> AsyncIterator[bytes]:
        first: float | None = None
        try:
            async for chunk in reply:
                if first is None:
                    first = time.perf_counter() - started
                yield chunk
                tap.feed(chunk)
        except ProxyError as exc:
            # Status and headers are gone already: end the stream with an error event.
            tap.usage.error_type = exc.error_type
            yield encode_event("error", anthropic_error_body(exc.error_type, exc.message))
        finally:
            await reply.aclose()
            on_done(tap.usage, first)

    return RelayResponse(body(), status_code=reply.status, headers=client_headers(reply))


async def read_reply(reply: UpstreamReply) -> tuple[bytes, Usage]:
    body = await reply.read()
    return body, usage_from_message(body) if reply.status == 200 else Usage()
