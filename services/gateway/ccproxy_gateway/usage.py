"""Reads usage out of an Anthropic answer without slowing the relay.

Streams are decoded on the side (the bytes go to the client first); only the events that carry
usage are parsed as JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from ccproxy_core.sse import SSEDecoder


@dataclass(slots=True)
class Usage:
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    stop_reason: str | None = None
    error_type: str | None = None
    #: ``time.perf_counter()`` when the first content delta passed (time to first token).
    first_token: float | None = None

    def add(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.input_tokens = usage.get("input_tokens") or self.input_tokens
        self.output_tokens = usage.get("output_tokens") or self.output_tokens
        self.cache_read_tokens = usage.get("cache_read_input_tokens") or self.cache_read_tokens
        self.cache_write_tokens = usage.get("cache_creation_input_tokens") or self.cache_write_tokens


#: The ``event:`` lines of what the tap reads (message_start, message_delta, error), with and
#: without the optional space: a chunk holding none of them is not decoded.
_WANTED = (b"event: message_", b"event:message_", b"event: error", b"event:error")
_FIRST_TOKEN = (b"event: content_block_delta", b"event:content_block_delta")


class StreamUsageTap:
    def __init__(self) -> None:
        self.usage = Usage()
        self._decoder = SSEDecoder()

    def _skippable(self, chunk: bytes) -> bool:
        """True when ``chunk`` is whole events none of which the tap needs (nearly every
        content delta): then it is not decoded at all, a few substring searches instead of
        a line-by-line parse."""
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
            if event.event == "content_block_delta" and self.usage.first_token is None:
                self.usage.first_token = time.perf_counter()
            if event.event not in ("message_start", "message_delta", "error"):
                continue
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if event.event == "message_start":
                message = data.get("message") or {}
                self.usage.model = message.get("model") or self.usage.model
                self.usage.add(message.get("usage"))
            elif event.event == "message_delta":
                self.usage.add(data.get("usage"))
                self.usage.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.usage.stop_reason
            else:
                self.usage.error_type = (data.get("error") or {}).get("type", "error")


def usage_from_message(body: bytes) -> Usage:
    usage = Usage()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return usage
    if isinstance(data, dict):
        usage.model = data.get("model") or ""
        usage.add(data.get("usage"))
        usage.stop_reason = data.get("stop_reason")
    return usage
