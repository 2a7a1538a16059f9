"""Server-sent events: an encoder, and a decoder for arbitrary chunk boundaries (for translation and
usage; the relay itself never decodes)."""

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
    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    @property
    def idle(self) -> bool:
        return not self._buffer and not self._event and not self._data

    def feed(self, chunk: bytes) -> Iterator[ServerSentEvent]:
        # Scan by index and keep the tail once: re-slicing per line was O(n^2) on a large chunk.
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
