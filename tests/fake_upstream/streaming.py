"""Server-sent events in the upstream's order, and a response that notices a client leaving.

Order: message_start, ping, then per block content_block_start, content_block_delta*,
content_block_stop (a ping after the first block), message_delta (stop_reason, usage),
message_stop. Text is split into several text_deltas, tool input JSON into several
input_json_deltas (the first one empty, as upstream does), thinking into thinking_deltas and one
signature_delta.

:class:`TimedResponse` sends chunks with optional delays and watches ``http.disconnect`` the
whole time, so the request record says ``disconnected`` when a proxy cancels its upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.types import Receive, Scope, Send

from tests.fake_upstream.answers import Answer, split_text
from tests.fake_upstream.errors import error_body
from tests.fake_upstream.state import RequestRecord


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def split_json(text: str, pieces: int = 4) -> list[str]:
    """Arbitrary cut points (mid-token), as the real API splits ``partial_json``."""
    size = max(1, -(-len(text) // pieces))
    return [""] + [text[i : i + size] for i in range(0, len(text), size)]


def stream_events(answer: Answer, *, midstream_error: bool = False) -> Iterator[bytes]:
    start_message = answer.message() | {"content": [], "stop_reason": None}
    start_message["usage"] = answer.usage | {"output_tokens": 1}
    yield sse("message_start", {"type": "message_start", "message": start_message})
    yield sse("ping", {"type": "ping"})
    for index, block in enumerate(answer.content):
        kind = block["type"]
        if kind == "text":
            yield sse("content_block_start",
                      {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            for n, piece in enumerate(answer.text_chunks.get(index) or split_text(block["text"], 4)):
                yield sse("content_block_delta",
                          {"type": "content_block_delta", "index": index,
                           "delta": {"type": "text_delta", "text": piece}})
                if midstream_error and n == 0:
                    yield sse("error", error_body(529, "Overloaded"))
                    return
        elif kind == "thinking":
            yield sse("content_block_start",
                      {"type": "content_block_start", "index": index,
                       "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            for piece in split_text(block["thinking"], 3):
                yield sse("content_block_delta",
                          {"type": "content_block_delta", "index": index,
                           "delta": {"type": "thinking_delta", "thinking": piece}})
            yield sse("content_block_delta",
                      {"type": "content_block_delta", "index": index,
                       "delta": {"type": "signature_delta", "signature": block["signature"]}})
        elif kind == "tool_use":
            yield sse("content_block_start",
                      {"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
            for piece in split_json(json.dumps(block["input"])):
                yield sse("content_block_delta",
                          {"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": piece}})
        else:
            yield sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
        if index == 0:
            yield sse("ping", {"type": "ping"})
    yield sse("message_delta",
              {"type": "message_delta",
               "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
               "usage": answer.usage})
    yield sse("message_stop", {"type": "message_stop"})


class TimedResponse:
    """An ASGI response that sends ``chunks`` one by one, ``delay`` seconds before each, and
    records in ``record`` how far it got. ``hang_after``: stop sending after that many chunks and
    wait (for the client to give up) without ever finishing. ``hold_after``: after the first chunk,
    wait until that event is set (the test releases the stream) or the client leaves."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        chunks: Iterable[bytes],
        record: RequestRecord,
        *,
        delay: float = 0.0,
        hang_after: int | None = None,
        hold_after: asyncio.Event | None = None,
        hang_before_headers: bool = False,
        total: int | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self.record = record
        self.delay = delay
        self.hang_after = hang_after
        self.hold_after = hold_after
        self.hang_before_headers = hang_before_headers
        self.record.events_total = total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch())
        record = self.record
        try:
            if self.hang_before_headers:
                await gone.wait()
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status,
                    "headers": [(k.encode(), v.encode()) for k, v in self.headers.items()],
                }
            )
            record.status = self.status
            record.outcome = "streaming"
            for n, chunk in enumerate(self.chunks):
                if self.hang_after is not None and n >= self.hang_after:
                    await gone.wait()
                    return
                if n == 1 and self.hold_after is not None and await _first(gone, self.hold_after):
                    return
                if self.delay and await _wait(gone, self.delay):
                    return
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                now = time.time()
                record.events_sent += 1
                record.first_event_at = record.first_event_at or now
                record.last_event_at = now
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            record.outcome = "completed"
        except OSError:
            gone.set()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if record.outcome != "completed":
                record.outcome = "disconnected" if gone.is_set() else "error"
            record.finished_at = time.time()


async def _wait(gone: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless the client leaves first; True when it left."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gone.wait(), seconds)
    return gone.is_set()


async def _first(gone: asyncio.Event, release: asyncio.Event) -> bool:
    """Wait until ``release`` is set or the client leaves; True when it left."""
    waits = [asyncio.create_task(gone.wait()), asyncio.create_task(release.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return gone.is_set()
