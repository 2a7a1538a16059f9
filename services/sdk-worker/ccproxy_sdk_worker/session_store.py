"""Claude Code session transcripts in Redis (claude-agent-sdk's ``SessionStore``).

Claude Code writes each session to a JSONL file on the worker's disk; the SDK mirrors every line
here, and on resume writes the lines back to a temporary file for the CLI. So a session started
on one worker continues on any other (and survives a worker's restart): the session-to-worker
mapping is simply "any worker", with the last one noted in the session's hash for operators.

Keys are by session id only (the SDK's ``project_key``, derived from the cwd, is ignored), so a
session resumes whatever directory the next request names. Lines are deduplicated by their
``uuid``, which the SDK asks adapters to treat as an idempotency key; every key expires after
``CLAUDE__SESSION_TTL`` without use.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from ccproxy_core.redis import as_text
from ccproxy_core.sdk_jobs import SdkKeys


class RedisSessionStore:
    """The SDK's ``SessionStore`` protocol: append, load, list_subkeys, delete."""

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
        fresh: list[bytes] = []
        ids = [e.get("uuid") if isinstance(e, dict) else None for e in entries]
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                if entry_id:
                    pipe.sadd(seen_key, entry_id)
            added = iter(await pipe.execute())
        for entry, entry_id in zip(entries, ids, strict=True):
            if not entry_id or next(added):
                fresh.append(orjson.dumps(entry))
        async with self.redis.pipeline(transaction=False) as pipe:
            if fresh:
                pipe.rpush(list_key, *fresh)
            if key.get("subpath"):
                pipe.sadd(self.keys.transcript(key["session_id"]) + ":subkeys", key["subpath"])
            for k in (list_key, seen_key, self.keys.transcript(key["session_id"]) + ":subkeys"):
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
        subpaths = await self.list_subkeys(key)
        doomed = [base, base + ":uuids", base + ":subkeys"]
        for sub in subpaths:
            sub_key = self.keys.transcript(key["session_id"], sub)
            doomed += [sub_key, sub_key + ":uuids"]
        await self.redis.delete(*doomed)

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.transcript(session_id)))
