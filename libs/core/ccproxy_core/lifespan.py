"""An app's start-up and shut-down, written once: the parts it runs, in order, on one
:class:`~contextlib.AsyncExitStack`.

Parts start in the order given and stop in reverse; a part that fails to start stops every part
already started (and the error goes on, so the server says start-up failed). A part is a
function returning an async context manager, so the app may be started more than once (tests
do, with one ``TestClient`` after another). Each app factory hands the result to Starlette as
``lifespan=``; nothing is patched onto an app afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

__all__ = ["Lifespan", "Part", "closing", "lifespan", "running"]

Part = Callable[[], AbstractAsyncContextManager[Any]]
Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def lifespan(*parts: Part) -> Lifespan:
    """A Starlette ``lifespan`` running ``parts`` (see the module's docstring)."""

    @contextlib.asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for part in parts:
                await stack.enter_async_context(part())
            yield

    return run


def running(start: Callable[[], Awaitable[Any]] | None = None,
            stop: Callable[[], Awaitable[Any]] | None = None) -> Part:
    """A part made of a ``start()`` and a ``stop()`` (either may be None)."""

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
