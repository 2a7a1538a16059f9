"""An app's start-up and shut-down: its parts, started in order on one AsyncExitStack and stopped
in reverse (a part failing to start stops those before it). A part is a function returning an
async context manager, so an app can start more than once (tests do)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

Part = Callable[[], AbstractAsyncContextManager[Any]]
Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def lifespan(*parts: Part) -> Lifespan:
    @contextlib.asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for part in parts:
                await stack.enter_async_context(part())
            yield

    return run


def running(start: Callable[[], Awaitable[Any]] | None = None,
            stop: Callable[[], Awaitable[Any]] | None = None) -> Part:

    @contextlib.asynccontextmanager
    async def part() -> AsyncIterator[None]:
        if start is not None:
            await start()
        try:
            yield
        finally:
            if stop is not None:
                await stop()

    return part


def closing(aclose: Callable[[], Awaitable[Any]]) -> Part:
    """A part with nothing to start, closed at shut-down (a client, a connection pool)."""
    return running(None, aclose)
