"""Reading a client's JSON body: size-capped, content-type checked, clear 4xx on bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccproxy_core.errors import ProxyError

#: Methods whose requests carry no body worth waiting for.
BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


class BodyTimeout:
    """A client that stops sending its request body half-way gets a 408 in its own format (and
    the connection is closed) after ``seconds`` of silence, instead of holding the request open
    forever. Only waits for the body are timed: once it is complete, ``receive`` (a disconnect
    watch during a long upstream call) is passed through untouched."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS:
            await self.app(scope, receive, send)
            return
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(self.seconds):
                    message = await receive()
            except TimeoutError:
                complete = True
                raise ProxyError(
                    408, f"the request body stopped arriving for {self.seconds:g} s; send it whole",
                    headers={"connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.split(";")[0].lower():
        raise ProxyError(415, f"Content-Type must be application/json, not {content_type!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ProxyError(413, f"request body is larger than the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ProxyError(413, f"request body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ProxyError(400, "request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProxyError(400, f"request body must be a JSON object, not {type(data).__name__}")
    return data
