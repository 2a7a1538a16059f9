"""Permission requests in Redis: the only state there is, so any replica can serve any client.

Layout (under ``REDIS__KEY_PREFIX`` + ``perm:``):

- ``req:{id}``: the request as created (JSON), never rewritten; expires ``retention`` after
  the request's own deadline, so a decided one can still be looked up for a while.
- ``decision:{id}``: the decision (JSON), written with ``SET NX``: the first decision wins,
  atomically, whichever replica or client made it, and the expiry is just another decision.
- ``pending``: a sorted set of undecided ids scored by deadline (listing, replay, the sweeper).
- channel ``events``: ``{"event": ..., "view": ...}`` for every new and decided request.

Only the writer that won the ``SET NX`` publishes, so each request is announced resolved once.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from ccproxy_core.permissions import PermissionAsk, PermissionDecision, PermissionView, denial
from ccproxy_core.redis import as_text
from ccproxy_core.settings import PermissionsSettings

REQUEST = "permission_request"
RESOLVED = "permission_resolved"
EXPIRED = "permission_expired"


def new_id() -> str:
    return "perm_" + secrets.token_urlsafe(12)


def event_for(view: PermissionView) -> str:
    if view.status == "pending":
        return REQUEST
    return EXPIRED if view.status == "expired" else RESOLVED


class PermissionStore:
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

    async def publish(self, view: PermissionView) -> None:
        await self.redis.publish(self.channel, encode_message(view))

    async def create(self, ask: PermissionAsk, wait_seconds: float | None = None) -> PermissionView:
        now = time.time()
        wait = self.settings.timeout_seconds if wait_seconds is None else wait_seconds
        view = PermissionView(**ask.model_dump(), id=new_id(), created_at=now, expires_at=now + wait)
        ttl = max(1, int(wait + self.settings.retention_seconds))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._req(view.id), view.model_dump_json(), ex=ttl)
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
        raws = await self.redis.mget([self._req(i) for i in ids])
        decisions = await self.redis.mget([self._decision(i) for i in ids])
        out: list[PermissionView] = []
        stale: list[str] = []
        for request_id, raw, decided in zip(ids, raws, decisions, strict=True):
            view = merge(raw, decided)
            if view is None or view.status != "pending":
                stale.append(request_id)
            else:
                out.append(view)
        if stale:
            await self.redis.zrem(self._pending, *stale)
        return out

    async def decide(self, request_id: str, decision: PermissionDecision) -> tuple[PermissionView | None, bool]:
        """Record ``decision`` unless another came first: (the request as it now is, whether we won)."""
        raw = await self.redis.get(self._req(request_id))
        if raw is None:
            return None, False
        won = await self.redis.set(
            self._decision(request_id),
            decision.model_dump_json(),
            nx=True,
            ex=max(1, int(self.settings.retention_seconds)),
        )
        if not won:
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
        waited = view.expires_at - view.created_at
        why = f"nobody answered the request within {waited:g} seconds."
        return await self.decide(request_id, denial(view, "expired", why))

    async def expire_due(self, now: float | None = None) -> int:
        """Expire every request past its deadline (any replica may run this; SET NX keeps it single)."""
        due = await self.redis.zrangebyscore(self._pending, "-inf", now or time.time(), start=0, num=100)
        count = 0
        for raw_id in due:
            _, won = await self.expire(as_text(raw_id))
            count += won
        return count


def merge(raw: bytes | str | None, decided: bytes | str | None) -> PermissionView | None:
    if raw is None:
        return None
    view = PermissionView.model_validate_json(raw)
    if decided is not None:
        decision = PermissionDecision.model_validate_json(decided)
        view.decision = decision
        view.status = decision.status
    return view


def encode_message(view: PermissionView) -> bytes:
    return orjson.dumps({"event": event_for(view), "view": view.model_dump(mode="json")})


def decode_message(data: bytes | str) -> tuple[str, PermissionView]:
    message: dict[str, Any] = orjson.loads(data)
    return str(message["event"]), PermissionView.model_validate(message["view"])
