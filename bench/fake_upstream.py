"""A fake Anthropic API that is fast enough not to be the bottleneck of a benchmark.

Not the test suite's faithful fake (tests/fake_upstream/), which validates requests and is
slower: this one answers ``POST .../messages`` from precomputed bytes on a bare asyncio
protocol (uvloop + httptools), and streams ``N`` text deltas with a chosen delay between them.
It accepts any credential, and only counts what it saw (``GET /_stats``), so the harness can
check that ccproxy really sent the OAuth bearer, the betas and the Claude Code identity.

The stream's shape is read from the request itself, so one server serves every scenario and
every proxy passes it through: a user message containing ``bench:events=N:delay=MS``.

Run: ``python -m bench.fake_upstream --port 9000 [--workers 2]`` (``--workers`` > 1 binds the
port with SO_REUSEPORT in several processes; ``/_stats`` then counts one process only).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import socket
import sys
from typing import cast

import httptools
import orjson

IDENTITY = b"You are Claude Code, Anthropic's official CLI for Claude."
SHAPE = re.compile(rb"bench:events=(\d+):delay=(\d+)")
STREAM = re.compile(rb'"stream"\s*:\s*true')
MODEL = "claude-sonnet-4-5-20250929"

MESSAGE = orjson.dumps(
    {
        "id": "msg_bench0000000000000000000001",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello! This is a canned answer from the benchmark upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 42,
            "output_tokens": 16,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
)
COMMON_HEADERS = (
    b"request-id: req_bench000000000000000001\r\n"
    b"anthropic-ratelimit-unified-status: allowed\r\n"
    b"anthropic-ratelimit-unified-5h-utilization: 0.01\r\n"
)


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\n" + COMMON_HEADERS
        + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


MESSAGE_RESPONSE = _response(b"200 OK", b"application/json", MESSAGE)
COUNT_RESPONSE = _response(b"200 OK", b"application/json", b'{"input_tokens":42}')
NOT_FOUND = _response(
    b"404 Not Found", b"application/json",
    b'{"type":"error","error":{"type":"not_found_error","message":"not found"}}',
)
EMPTY_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
    + COMMON_HEADERS + b"transfer-encoding: chunked\r\n\r\n"
)


def _event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


STREAM_START = _chunk(
    _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_bench0000000000000000000002", "type": "message", "role": "assistant",
                "model": MODEL, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 42, "output_tokens": 1, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0},
            },
        },
    )
    + _event("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}})
)
DELTA = _chunk(
    _event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "The quick brown fox jumps over the lazy dog. "}},
    )
)


def _stream_end(output_tokens: int) -> bytes:
    return _chunk(
        _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _event("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": output_tokens}})
        + _event("message_stop", {"type": "message_stop"})
    ) + b"0\r\n\r\n"


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.streams = 0
        self.bearer = 0
        self.oauth_beta = 0
        self.identity = 0

    def json(self) -> bytes:
        return orjson.dumps({**self.__dict__, "pid": os.getpid()})


class Upstream(asyncio.Protocol):
    """One client connection; HTTP/1.1 keep-alive, requests answered in order."""

    def __init__(self, stats: Stats, default_events: int, default_delay_ms: int) -> None:
        self.stats = stats
        self.default_events = default_events
        self.default_delay = default_delay_ms
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.auth = b""
        self.beta = b""
        self.streaming: asyncio.Task[None] | None = None
        self.pending: list[tuple[bytes, bytes, bytes, bytes, bytes]] = []

    # -- transport ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.auth = b""
        self.beta = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"authorization":
            self.auth = value
        elif lower == b"anthropic-beta":
            self.beta = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (self.parser.get_method(), self.url, b"".join(self.body), self.auth, self.beta)
        if self.streaming is not None:
            self.pending.append(request)  # a pipelined request waits for the stream to end
        else:
            self.handle(*request)

    # -- answers ----------------------------------------------------------------------------

    def handle(self, method: bytes, url: bytes, body: bytes, auth: bytes, beta: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/messages"):
            stats = self.stats
            stats.requests += 1
            if auth.startswith(b"Bearer "):
                stats.bearer += 1
            if b"oauth-2025-04-20" in beta:
                stats.oauth_beta += 1
            if IDENTITY in body:
                stats.identity += 1
            if STREAM.search(body) is None:
                transport.write(MESSAGE_RESPONSE)
                return
            stats.streams += 1
            shape = SHAPE.search(body)
            events = int(shape.group(1)) if shape else self.default_events
            delay = int(shape.group(2)) if shape else self.default_delay
            if delay <= 0:
                transport.write(STREAM_HEAD + STREAM_START + DELTA * events + _stream_end(events))
                return
            self.streaming = asyncio.get_running_loop().create_task(self.stream(events, delay / 1000))
        elif path.endswith(b"/count_tokens"):
            transport.write(COUNT_RESPONSE)
        elif path == b"/_stats":
            transport.write(_response(b"200 OK", b"application/json", self.stats.json()))
        elif method in (b"HEAD", b"GET") and path in (b"/", b"/health"):
            transport.write(EMPTY_OK)
        else:
            transport.write(NOT_FOUND)

    async def stream(self, events: int, delay: float) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(STREAM_HEAD + STREAM_START)
        for _ in range(events):
            await asyncio.sleep(delay)
            if self.transport is None:
                return
            transport.write(DELTA)
        transport.write(_stream_end(events))
        self.streaming = None
        while self.pending and self.streaming is None:
            self.handle(*self.pending.pop(0))


def listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def serve(sock: socket.socket, events: int, delay_ms: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = Stats()
        server = await loop.create_server(lambda: Upstream(stats, events, delay_ms), sock=sock, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port (printed on stdout)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--events", type=int, default=20, help="text deltas when the request names none")
    parser.add_argument("--delay-ms", type=int, default=0, help="delay between deltas when none is named")
    args = parser.parse_args(argv)
    reuse = args.workers > 1
    sock = listen(args.host, args.port, reuse)
    port = sock.getsockname()[1]
    print(f"listening on http://{args.host}:{port}", flush=True)
    if not reuse:
        serve(sock, args.events, args.delay_ms)
        return
    procs = []
    for _ in range(args.workers - 1):
        child_sock = listen(args.host, port, True)
        proc = multiprocessing.get_context("fork").Process(
            target=serve, args=(child_sock, args.events, args.delay_ms), daemon=True
        )
        proc.start()
        child_sock.close()
        procs.append(proc)
    try:
        serve(sock, args.events, args.delay_ms)
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(2)


if __name__ == "__main__":
    sys.exit(main())
