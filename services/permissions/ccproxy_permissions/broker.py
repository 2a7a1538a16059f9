"""Create, wait, decide, expire; shared by the HTTP app and the in-process gate. One pub/sub
subscription per process fans out to every stream and waiter. Pub/sub loses what is published while
disconnected, so a message is only a wake-up: after a resubscribe every listener re-reads Redis,
and a waiter re-reads every ``RECHECK_SECONDS`` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from redis.asyncio import Redis

from ccproxy_core.identity import Caller
from ccproxy_core.permissions import (
    PermissionAsk,
    PermissionDecision,
    PermissionResponse,
    PermissionView,
    ended,
    refusal,
)
from ccproxy_core.redis import UNAVAILABLE
from ccproxy_core.settings import Settings
from ccproxy_permissions.store import PermissionStore, decode_message

log = logging.getLogger(__name__)

RECHECK_SECONDS = 2.0
SWEEP_SECONDS = 1.0

#: ``(event, view)`` for a message, or ``None``: "you may have missed messages, re-read".
Listener = Callable[[tuple[str, PermissionView] | None], None]


class AlreadyDecided(Exception):
    def __init__(self, view: PermissionView) -> None:
        super().__init__(f"permission request {view.id} was already decided: {view.status}")
        self.view = view


def visible(identity: Caller, view: PermissionView) -> bool:
    """A member sees only its own key's requests; an admin sees all."""
    return identity.admin or view.key_id == identity.id


class PermissionBroker:
    """Also the :class:`~ccproxy_core.permissions.PermissionGate` of a worker in this process."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.store = PermissionStore(redis, settings.redis.key_prefix, settings.permissions)
        self._listeners: set[Listener] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._subscribe()), asyncio.create_task(self._sweep())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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

    async def _subscribe(self) -> None:
        pause = 0.1
        first = True
        while True:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.channel)
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
                log.warning("permissions: pub/sub lost (%s); reconnecting", type(exc).__name__)
                first = False
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _sweep(self) -> None:
        """Expire overdue requests even when nobody waits for them any more (a worker died)."""
        while True:
            try:
                await self.store.expire_due()
            except UNAVAILABLE as exc:
                log.warning("permissions: sweeper cannot reach Redis (%s)", type(exc).__name__)
            except Exception:
                log.exception("permissions: sweeper failed")
            await asyncio.sleep(SWEEP_SECONDS)

    async def create(self, ask: PermissionAsk) -> PermissionView:
        view = await self.store.create(ask)
        log.info("permission %s: %s for key %s is waiting", view.id, view.tool_name, view.key_name)
        return view

    async def wait(self, request_id: str, seconds: float) -> PermissionView | None:
        """The request once decided, or still pending after ``seconds``; None if unknown."""
        deadline = time.monotonic() + seconds
        woken = asyncio.Event()

        def listener(item: tuple[str, PermissionView] | None) -> None:
            if item is None or item[1].id == request_id:
                woken.set()

        with self.listen(listener):
            while True:
                woken.clear()
                view = await self.store.get(request_id)
                if view is None or view.status != "pending":
                    return view
                if time.time() >= view.expires_at:
                    view, _ = await self.store.expire(request_id)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return view
                pause = min(left, RECHECK_SECONDS, max(0.0, view.expires_at - time.time()) + 0.01)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), pause)

    async def ask(self, ask: PermissionAsk) -> PermissionView:
        """Create the request and wait until it is decided; cancelling the call withdraws it."""
        view = await self.create(ask)
        try:
            while view.status == "pending":
                got = await self.wait(view.id, 30.0)
                if got is None:  # vanished from Redis (flushed): nobody can approve it now
                    return ended(view, "cancelled", "the request was lost.")
                view = got
            return view
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.cancel(view.id))
            raise

    async def respond(
        self, view: PermissionView, response: PermissionResponse, identity: Caller
    ) -> PermissionView | None:
        """A human's decision on ``view``; None if it is gone, AlreadyDecided if too late."""
        allow = response.behavior == "allow"
        reason = f": {response.message}" if response.message else "."
        decision = PermissionDecision(
            behavior=response.behavior, status="allowed" if allow else "denied",
            updated_input=response.updated_input if allow else None,
            message=None if allow else f"{identity.name} denied permission to use {view.tool_name}{reason}",
            decided_by=identity.name, decided_at=time.time(),
        )
        decided, won = await self.store.decide(view.id, decision)
        if decided is None:
            return None
        if not won:
            raise AlreadyDecided(decided)
        log.info("permission %s: %s by %s", view.id, decided.status, identity.name)
        return decided

    async def cancel(self, request_id: str) -> PermissionView | None:
        view, _ = await self.store.decide(request_id, refusal("cancelled", "The run was cancelled."))
        return view
