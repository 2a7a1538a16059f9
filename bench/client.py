"""An async HTTP/1.1 load client for what wrk cannot measure: time to first streamed byte,
many concurrent long streams, and a fallback load loop where wrk is not installed.

It runs as its own process, pinned to its own core, so the servers under test do not share a
core with it: ``python -m bench.client SPEC_JSON`` prints one JSON result on stdout.
Requests are built as raw bytes once; responses are parsed with httptools (the same parser
uvicorn uses), so the client costs a few microseconds per request.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, cast

import httptools
import orjson


def build_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Exchange(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.sent = 0.0
        self.first_byte = 0.0
        self.nbytes = 0
        self.status = 0
        self.keep_alive = True
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection closed before the answer ended"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if not self.nbytes:
            self.first_byte = time.perf_counter()
        self.nbytes += len(body)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def send(self, raw: bytes) -> tuple[int, float, float, int]:
        """(status, seconds to first body byte, seconds to the end, body bytes)."""
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.nbytes = 0
        self.first_byte = 0.0
        self.sent = time.perf_counter()
        self.transport.write(raw)
        await self.done
        end = time.perf_counter()
        first = (self.first_byte or end) - self.sent
        return self.status, first, end - self.sent, self.nbytes


async def connect(host: str, port: int) -> Exchange:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Exchange, host, port)
    return proto


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p90_ms": percentile(values, 90) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": max(values) * 1000 if values else float("nan"),
    }


async def sequential(host: str, port: int, raw: bytes, count: int, warmup: int) -> dict[str, Any]:
    """``count`` requests one after another on one connection: latency and first byte."""
    conn = await connect(host, port)
    firsts: list[float] = []
    totals: list[float] = []
    errors = 0
    for i in range(warmup + count):
        if conn.transport is None:
            conn = await connect(host, port)
        try:
            status, first, total, _ = await conn.send(raw)
        except (ConnectionError, httptools.HttpParserError):
            errors += 1
            continue
        if status != 200:
            errors += 1
        if i >= warmup:
            firsts.append(first)
            totals.append(total)
    if conn.transport is not None:
        conn.transport.close()
    return {"requests": len(totals), "errors": errors, "first_byte": summary_ms(firsts), "latency": summary_ms(totals)}


async def load(host: str, port: int, raw: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` connections, each sending as soon as its answer ends."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        conn: Exchange | None = None
        while time.perf_counter() < deadline:
            try:
                if conn is None or conn.transport is None:
                    conn = await connect(host, port)
                status, _, total, _ = await conn.send(raw)
            except (OSError, httptools.HttpParserError):
                errors += 1
                conn = None
                continue
            if status == 200:
                latencies.append(total)
            else:
                errors += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "latency": summary_ms(latencies),
    }


async def streams(host: str, port: int, raw: bytes, count: int, limit_s: float) -> dict[str, Any]:
    """``count`` streams open at once, each read to its end."""
    durations: list[float] = []
    firsts: list[float] = []
    nbytes = 0
    errors: dict[str, int] = {}

    async def one() -> None:
        nonlocal nbytes
        try:
            conn = await connect(host, port)
            try:
                status, first, total, size = await asyncio.wait_for(conn.send(raw), limit_s)
            finally:
                if conn.transport is not None:
                    conn.transport.close()
        except Exception as exc:  # any failure is counted, the rest go on
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if status != 200:
            errors[f"status {status}"] = errors.get(f"status {status}", 0) + 1
            return
        durations.append(total)
        firsts.append(first)
        nbytes += size

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return {
        "completed": len(durations),
        "errors": errors,
        "bytes": nbytes,
        "seconds": time.perf_counter() - started,
        "duration": summary_ms(durations),
        "first_byte": summary_ms(firsts),
    }


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    raw = build_request(host, port, spec["path"], spec["headers"], spec["body"].encode())
    mode = spec["mode"]
    if mode == "sequential":
        return await sequential(host, port, raw, spec["count"], spec.get("warmup", 20))
    if mode == "load":
        return await load(host, port, raw, spec["concurrency"], spec["seconds"])
    if mode == "streams":
        return await streams(host, port, raw, spec["count"], spec.get("timeout", 300))
    raise ValueError(f"unknown mode {mode!r}")


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    cpu = spec.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        result = uvloop.run(run(spec))
    except ImportError:
        result = asyncio.run(run(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
