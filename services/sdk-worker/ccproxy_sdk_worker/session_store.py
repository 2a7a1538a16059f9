"""Claude Code session transcripts in Redis (claude-agent-sdk's ``SessionStore``), so a session
resumes on any worker. Keyed by session id only (``project_key`` derives from the cwd, and a session
resumes in whatever directory the next request names); lines deduplicated by ``uuid`` (the SDK's
idempotency key); every key expires after ``CLAUDE__SESSION_TTL`` unused.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from ccproxy_core.redis import as_text
from ccproxy_core.sdk_jobs import SdkKeys


class RedisSessionStore:
    def __init__(self, redis: Redis, keys: SdkKeys, ttl: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl

    def _key(self, key: Any) -> str:
        return self.keys.transcript(key["session_id"], key.get("subpath"))

    async def append(self, key: Any, entries: list[Any]) -> None:
        if not entries:
            return
        list_key = self._key(key)
        seen_key = list_key + ":uuids"
        subkeys = self.keys.transcript(key["session_id"]) + ":subkeys"
        ids = [e.get("uuid") if isinstance(e, dict) else None for e in entries]
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in filter(None, ids):
                pipe.sadd(seen_key, entry_id)
            added = iter(await pipe.execute())  # per id in order: 1 if it was new
        fresh = [orjson.dumps(e) for e, entry_id in zip(entries, ids, strict=True) if not entry_id or next(added)]
        async with self.redis.pipeline(transaction=False) as pipe:
            if fresh:
                pipe.rpush(list_key, *fresh)
            if key.get("subpath"):
                pipe.sadd(subkeys, key["subpath"])
            for k in (list_key, seen_key, subkeys):
                pipe.expire(k, self.ttl)
            await pipe.execute()

    async def load(self, key: Any) -> list[Any] | None:
        raw = await self.redis.lrange(self._key(key), 0, -1)  # type: ignore[misc]
        if not raw:
            return None
        await self.redis.expire(self._key(key), self.ttl)
        return [orjson.loads(line) for line in raw]

    async def list_subkeys(self, key: Any) -> list[str]:
        members = await self.redis.smembers(self.keys.transcript(key["session_id"]) + ":subkeys")  # type: ignore[misc]
        return sorted(as_text(m) for m in members)

    async def delete(self, key: Any) -> None:
        base = self.keys.transcript(key["session_id"])
        if key.get("subpath"):
            await self.redis.delete(self._key(key), self._key(key) + ":uuids")
            await self.redis.srem(base + ":subkeys", key["subpath"])  # type: ignore[misc]
            return
        doomed = [base, base + ":uuids", base + ":subkeys"]
        for sub in await self.list_subkeys(key):
            sub_key = self.keys.transcript(key["session_id"], sub)
            doomed += [sub_key, sub_key + ":uuids"]
        await self.redis.delete(*doomed)

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.transcript(session_id)))
