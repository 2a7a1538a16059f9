"""Work that only matters while the caller is connected: cancelled when it hangs up, so an upstream
request does not go on for nobody."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from ccproxy_core.errors import ProxyError

T = TypeVar("T")


async def until_disconnect(request: Request, work: Awaitable[T], message: str = "client disconnected") -> T:
    """Await ``work``, cancelling it if the caller disconnects first (a 499 with ``message``)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ProxyError(499, message, "api_error")
        return task.result()
    finally:
        watcher.cancel()
