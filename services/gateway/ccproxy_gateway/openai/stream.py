"""What the two OpenAI stream translators (Chat Completions, Responses) share.

Both read the same Anthropic events and report the same things about the stream (tokens, stop
reason, failure, time to first token); only what each event becomes differs. So the dispatch of
events and the loop over the upstream's stream live here, and each format says, in a subclass,
what a message start, a block's start, delta and stop, the end and a failure become.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

import orjson

from ccproxy_core.errors import ProxyError
from ccproxy_core.sse import ServerSentEvent
from ccproxy_gateway.relay import Usage

#: What a translator yields for one event: a chunk body (chat), an ``(event, body)`` pair (responses).
T = TypeVar("T")


class StreamTranslator(Generic[T]):
    """Anthropic stream events in, one OpenAI format's output out, one event at a time."""

    def __init__(self, created: int | None) -> None:
        self.created = created or int(time.time())
        #: What the stream reports (tokens, stop reason, failure, first token), read as it passes:
        #: the answer's usage for billing, metrics and the access log.
        self.usage = Usage()
        self.finished = False
        self.failed = False

    def on_event(self, name: str, data: dict[str, Any]) -> Iterator[T]:
        self.usage.read(name, data)
        if name == "content_block_delta":
            yield from self._delta(int(data.get("index", 0)), data.get("delta") or {})
        elif name == "content_block_start":
            yield from self._start(int(data.get("index", 0)), data.get("content_block") or {})
        elif name == "content_block_stop":
            yield from self._stop(int(data.get("index", 0)))
        elif name == "message_start":
            yield from self._message_start(data.get("message") or {})
        elif name == "message_stop":
            yield from self.finish()
        elif name == "error":
            error = data.get("error") or {}
            yield from self.fail(str(error.get("type", "api_error")), str(error.get("message", "upstream error")))

    def _message_start(self, message: dict[str, Any]) -> Iterator[T]:
        raise NotImplementedError

    def _start(self, index: int, block: dict[str, Any]) -> Iterator[T]:
        raise NotImplementedError

    def _delta(self, index: int, delta: dict[str, Any]) -> Iterator[T]:
        raise NotImplementedError

    def _stop(self, index: int) -> Iterator[T]:
        raise NotImplementedError

    def finish(self) -> Iterator[T]:
        raise NotImplementedError

    def fail(self, error_type: str, message: str) -> Iterator[T]:
        """Sets ``finished``, ``failed`` and ``error_type``; yields the format's error output."""
        raise NotImplementedError


async def translate_stream(
    events: AsyncIterator[ServerSentEvent],
    translator: StreamTranslator[T],
    frame: Callable[[T], bytes],
    ended_early: str,
    end: bytes | None = None,
) -> AsyncIterator[bytes]:
    """SSE bytes for the client, as the upstream's events arrive. An error, in the upstream's
    stream or on the connection, or a stream that ends without ``message_stop`` (``ended_early``)
    ends it with the format's failure; ``end`` follows a stream that did not fail."""
    try:
        async for event in events:
            if event.event == "ping":
                continue
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            for out in translator.on_event(event.event, data):
                yield frame(out)
            if translator.finished:
                break
        else:
            for out in translator.fail("api_error", ended_early):
                yield frame(out)
    except ProxyError as exc:
        for out in translator.fail(exc.error_type, exc.message):
            yield frame(out)
    if end is not None and not translator.failed:
        yield end
