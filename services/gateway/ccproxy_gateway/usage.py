"""What one answer reports about itself, read once, without slowing the relay.

:class:`Usage` is filled from the Anthropic events (the stream tap for a relayed stream, the OpenAI
translators for a translated one) or from a whole message or the SDK run's summary. A stream is
decoded on the side, after its bytes went to the client, and only the events with usage are parsed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ccproxy_core.errors import ProxyError
from ccproxy_core.models import TokenUsage
from ccproxy_core.sse import SSEDecoder
from ccproxy_core.streaming import error_event


@dataclass(slots=True)
class Usage:
    """``first_token``: when the first content token passed (``time.perf_counter()``)."""

    tokens: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None
    error_type: str | None = None
    first_token: float | None = None

    def read(self, name: str, data: dict[str, Any]) -> None:
        """Take in one Anthropic stream event."""
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
    """Reads the :class:`Usage` of a relayed Anthropic stream from its raw chunks."""

    def __init__(self) -> None:
        self.usage = Usage()
        self._decoder = SSEDecoder()

    def _skippable(self, chunk: bytes) -> bool:
        """Whole events none of which the tap needs (nearly every content delta): a few substring
        searches instead of a line-by-line parse."""
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
        """The stream failed after its status and headers went: it ends with an error event."""
        self.usage.error_type = exc.error_type
        return error_event(exc)


def usage_from_message(body: bytes) -> Usage:
    """The usage of a whole Anthropic message (a non-stream answer)."""
    usage = Usage()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return usage
    if isinstance(data, dict):
        usage.tokens.model = data.get("model") or ""
        usage.tokens.add(data.get("usage"))
        usage.stop_reason = data.get("stop_reason")
    return usage
