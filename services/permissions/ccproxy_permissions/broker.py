"""Permission requests: stored in Redis (:class:`PermissionStore`); created, waited on, decided and
expired by the :class:`PermissionBroker`, shared by the HTTP app and the in-process gate. One pub/sub
subscription per process fans out to every stream and waiter. Pub/sub loses what is published while
disconnected, so a message is only a wake-up: after a resubscribe every listener re-reads Redis,
and a waiter re-reads every ``RECHECK_SECONDS`` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from redis.asyncio import Redis

from ccproxy_core.identity import Caller
from ccproxy_core.permissions import (
    PermissionAsk,
    PermissionDecision,
    PermissionResponse,
    PermissionView,
    denial,
    ended,
    refusal,
)
from ccproxy_core.redis import UNAVAILABLE, as_text
from ccproxy_core.settings import PermissionsSettings, Settings

log = logging.getLogger(__name__)

RECHECK_SECONDS = 2.0
SWEEP_SECONDS = 1.0

#: ``(event, view)`` for a message, or ``None``: "you may have missed messages, re-read".
Listener = Callable[[tuple[str, PermissionView] | None], None]

REQUEST = "permission_request"
RESOLVED = "permission_resolved"
EXPIRED = "permission_expired"


class PermissionStore:
    """Permission requests in Redis (the only state, so any replica serves any client), under
    ``REDIS__KEY_PREFIX`` + ``perm:``: ``req:{id}`` as created, kept ``retention`` past its deadline;
    ``decision:{id}`` by ``SET NX``, so the first decision (the expiry too) wins; ``pending`` the undecided
    ids by deadline; channel ``events`` gets ``{"event", "view"}`` from the writer that won."""

    def __init__(self, redis: Redis, prefix: str, settings: PermissionsSettings) -> None:
        self.redis = redis
        self.prefix = prefix + "perm:"
        self.settings = settings
        self.channel = self.prefix + "events"
        self._pending = self.prefix + "pending"

    def _req(self, request_id: str) -> str:
        return f"{self.prefix}req:{request_id}"

    def _decision(self, request_id: str) -> str:
        return f"{self.prefix}decision:{request_id}"

    async def create(self, ask: PermissionAsk) -> PermissionView:
        now = time.time()
        wait = self.settings.timeout_seconds
        view = PermissionView(**ask.model_dump(), id="perm_" + secrets.token_urlsafe(12), created_at=now,
                              expires_at=now + wait)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._req(view.id), view.model_dump_json(), ex=max(1, int(wait + self.settings.retention_seconds)))
            pipe.zadd(self._pending, {view.id: view.expires_at})
            pipe.publish(self.channel, encode_message(view))
            await pipe.execute()
        return view

    async def get(self, request_id: str) -> PermissionView | None:
        raw, decided = await self.redis.mget([self._req(request_id), self._decision(request_id)])
        return merge(raw, decided)

    async def pending(self) -> list[PermissionView]:
        """Every undecided request, oldest first; stale index entries are cleaned on the way."""
        ids = [as_text(i) for i in await self.redis.zrange(self._pending, 0, -1)]
        if not ids:
            return []
        found = await self.redis.mget([key for i in ids for key in (self._req(i), self._decision(i))])
        views = [merge(raw, decided) for raw, decided in zip(found[::2], found[1::2], strict=True)]
        stale = [i for i, view in zip(ids, views, strict=True) if view is None or view.status != "pending"]
        if stale:
            await self.redis.zrem(self._pending, *stale)
        return [view for view in views if view is not None and view.status == "pending"]

    async def decide(self, request_id: str, decision: PermissionDecision) -> tuple[PermissionView | None, bool]:
        """Record ``decision`` unless another came first: (the request as it now is, whether we won)."""
        raw = await self.redis.get(self._req(request_id))
        if raw is None:
            return None, False
        ttl = max(1, int(self.settings.retention_seconds))
        if not await self.redis.set(self._decision(request_id), decision.model_dump_json(), nx=True, ex=ttl):
            return await self.get(request_id), False
        view = merge(raw, decision.model_dump_json())
        assert view is not None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._pending, request_id)
            pipe.publish(self.channel, encode_message(view))
            await pipe.execute()
        return view, True

    async def expire(self, request_id: str) -> tuple[PermissionView | None, bool]:
        view = await self.get(request_id)
        if view is None or view.status != "pending":
            return view, False
        why = f"nobody answered the request within {view.expires_at - view.created_at:g} seconds."
        return await self.decide(request_id, denial(view, "expired", why))

    async def expire_due(self) -> None:
        """Expire every request past its deadline (any replica may run this; SET NX keeps it single)."""
        for raw_id in await self.redis.zrangebyscore(self._pending, "-inf", time.time(), start=0, num=100):
            await self.expire(as_text(raw_id))


def merge(raw: bytes | str | None, decided: bytes | str | None) -> PermissionView | None:
    if raw is None:
        return None
    view = PermissionView.model_validate_json(raw)
    if decided is not None:
        view.decision = PermissionDecision.model_validate_json(decided)
        view.status = view.decision.status
    return view


def encode_message(view: PermissionView) -> bytes:
    event = REQUEST if view.status == "pending" else EXPIRED if view.status == "expired" else RESOLVED
    return orjson.dumps({"event": event, "view": view.model_dump(mode="json")})


def decode_message(data: bytes | str) -> tuple[str, PermissionView]:
    message: dict[str, Any] = orjson.loads(data)
    return str(message["event"]), PermissionView.model_validate(message["view"])


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
