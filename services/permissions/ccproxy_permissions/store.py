"""Permission requests in Redis (the only state, so any replica serves any client), under
``REDIS__KEY_PREFIX`` + ``perm:``: ``req:{id}`` as created, kept ``retention`` past its deadline;
``decision:{id}`` by ``SET NX``, so the first decision (the expiry too) wins; ``pending`` the undecided
ids by deadline; channel ``events`` gets ``{"event", "view"}`` from the writer that won.
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
