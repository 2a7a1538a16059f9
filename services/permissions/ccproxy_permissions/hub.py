"""One Redis pub/sub subscription per process, fanned out to every stream and waiter in it.

Pub/sub is fire-and-forget: a message published while our connection was down is gone. So the
hub never claims completeness: after it (re)subscribes it tells every listener to resync, and
listeners treat the messages as a wake-up call and re-read the state in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from redis.asyncio import Redis

from ccproxy_core.permissions import PermissionView
from ccproxy_core.redis import UNAVAILABLE
from ccproxy_permissions.store import decode_message

log = logging.getLogger(__name__)

#: ``(event, view)`` for a message, or ``None``: "you may have missed messages, re-read".
Listener = Callable[[tuple[str, PermissionView] | None], None]


class EventHub:
    def __init__(self, redis: Redis, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    @contextlib.contextmanager
    def listen(self, listener: Listener) -> Iterator[None]:
        self._listeners.add(listener)
        try:
            yield
        finally:
            self._listeners.discard(listener)

    def _dispatch(self, item: tuple[str, PermissionView] | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(item)
            except Exception:
                log.exception("permission event listener failed")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="permissions-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        pause = 0.1
        first = True
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.subscribed.set()
                if not first:
                    log.info("permissions: pub/sub reconnected")
                    self._dispatch(None)
                first, pause = False, 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        self._dispatch(decode_message(message["data"]))
                    except (ValueError, KeyError):
                        log.warning("permissions: ignored a malformed event")
            except UNAVAILABLE as exc:
                self.subscribed.clear()
                log.warning("permissions: pub/sub lost (%s); reconnecting", type(exc).__name__)
                first = False
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
