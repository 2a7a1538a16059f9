"""What the tests use to talk to the permissions service: a stream follower, a worker-side gate."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ccproxy_core.permissions import HttpPermissionGate, PermissionAsk
from ccproxy_core.sse import iter_events
from tests.permissions.conftest import ADMIN_TOKEN, INTERNAL_SECRET


def ask(tool: str = "Write", key_id: str = "default", key_name: str = "admin", **input_: Any) -> PermissionAsk:
    return PermissionAsk(
        tool_name=tool,
        input=input_ or {"file_path": "notes/x.txt", "content": "hi", "nested": {"list": [1, 2, []]}},
        key_id=key_id,
        key_name=key_name,
    )


def gate(url: str) -> HttpPermissionGate:
    return HttpPermissionGate(url, INTERNAL_SECRET, poll_seconds=2.0)


def headers(key: str | None = ADMIN_TOKEN) -> dict[str, str]:
    return {"x-api-key": key} if key else {}


class Stream:
    """``GET /permissions/stream`` followed in the background; events land in :attr:`events`."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str | None = ADMIN_TOKEN) -> None:
        self.session, self.url, self.key = session, url, key
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def _run(self) -> None:
        async with self.session.get(f"{self.url}/permissions/stream", headers=headers(self.key)) as resp:
            assert resp.status == 200, await resp.text()
            self.connected.set()
            async for event in iter_events(resp.content.iter_any()):
                self.events.append((event.event, orjson.loads(event.data)))

    async def __aenter__(self) -> Stream:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done() and self._task.exception():
            raise self._task.exception()  # type: ignore[misc]
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_for(self, event: str, request_id: str | None = None, within: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            for name, data in self.events:
                if name == event and (request_id is None or data.get("id") == request_id):
                    return data
            if self._task is not None and self._task.done():
                raise AssertionError(f"stream ended: {self._task.exception()!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} for {request_id} in {self.events}")
            await asyncio.sleep(0.02)

    def ids(self, event: str) -> list[str]:
        return [data["id"] for name, data in self.events if name == event]


async def poll(check: Any, within: float = 10.0, message: str = "condition") -> Any:
    """Await ``check()`` until it returns something truthy (no sleeps as synchronisation)."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within} s waiting for {message}")
        await asyncio.sleep(0.02)


async def pending_ids(session: aiohttp.ClientSession, url: str, key: str | None = ADMIN_TOKEN) -> list[str]:
    async with session.get(f"{url}/permissions", headers=headers(key)) as resp:
        assert resp.status == 200, await resp.text()
        return [item["id"] for item in (await resp.json())["data"]]


async def respond(
    session: aiohttp.ClientSession, url: str, request_id: str, body: dict[str, Any], key: str | None = ADMIN_TOKEN
) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/permissions/{request_id}/respond", json=body, headers=headers(key)) as resp:
        return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as session:
        yield session
