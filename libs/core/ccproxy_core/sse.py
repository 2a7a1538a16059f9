"""Server-sent events: an incremental decoder and an encoder.

The relay path never decodes: it forwards bytes as they come. Decoding is for the places that
must understand a stream (translation to OpenAI, usage accounting), and works on arbitrary
chunk boundaries, since the network splits events anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass

import orjson


@dataclass(slots=True)
class ServerSentEvent:
    event: str
    data: str

    def json(self) -> object:
        return orjson.loads(self.data)


class SSEDecoder:
    """Feed bytes, get complete events (per the WHATWG event-stream rules we need)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    @property
    def idle(self) -> bool:
        """No partial line or event is pending: the next chunk starts a fresh event."""
        return not self._buffer and not self._event and not self._data

    def feed(self, chunk: bytes) -> Iterator[ServerSentEvent]:
        # Scan with an index and keep the unread tail once: re-slicing the buffer after every
        # line made a large chunk cost O(n^2) copying.
        buffer = self._buffer + chunk if self._buffer else chunk
        start = 0
        try:
            while True:
                end = buffer.find(b"\n", start)
                if end < 0:
                    return
                line = buffer[start:end].rstrip(b"\r").decode("utf-8")
                start = end + 1
                if not line:
                    if self._data or self._event:
                        event = ServerSentEvent(self._event or "message", "\n".join(self._data))
                        self._event, self._data = "", []
                        yield event
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)
        finally:
            self._buffer = buffer[start:]


async def iter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event


def encode_event(event: str | None, data: bytes | str) -> bytes:
    """One SSE frame. ``data`` is already serialised (JSON, or ``[DONE]``)."""
    payload = data.encode() if isinstance(data, str) else data
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"
