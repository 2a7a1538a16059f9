"""Claude Code session transcripts. The client's conversation as Claude Code takes it: the last user
message is the prompt; the earlier ones become a session transcript (Claude Code's JSONL) that the run
resumes, so they go upstream as real turns. Kept: text, images, documents; our ``tool_*_sdk`` blocks are
dropped; the client's own tool calls and results become text (Claude Code never had those tools).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from ccproxy_core.errors import ProxyError
from ccproxy_core.redis import as_text
from ccproxy_core.sdk_jobs import SdkKeys

#: Blocks a past turn may carry to the upstream as they are.
KEPT_USER_BLOCKS = frozenset({"text", "image", "document"})


def split_conversation(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(earlier messages, the last user message)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") != "system"]
    if not messages or messages[-1].get("role") != "user":
        raise ProxyError(400, "messages: the last message must be from the user (SDK mode runs Claude Code on it)",
                         param="messages")
    return messages[:-1], messages[-1]


def _texts(blocks: list[Any]) -> list[str]:
    return [b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]


def system_text(body: dict[str, Any]) -> str | None:
    """The client's system prompt as text (Claude Code appends it to its own)."""
    system = body.get("system")
    if isinstance(system, list):
        system = "\n\n".join(_texts(system))
    return (system or None) if isinstance(system, str) else None


def _kept(block: dict[str, Any], role: str) -> dict[str, Any] | None:
    """What ``block`` of a past ``role`` message stays as: itself, text, or nothing."""
    kind = block.get("type")
    if role == "user":
        if kind in KEPT_USER_BLOCKS:
            return {k: v for k, v in block.items() if k != "cache_control"}
    elif kind == "text":
        return {"type": "text", "text": block["text"]} if block.get("text") else None
    if kind == "tool_use":
        text = f"[called {block.get('name')} with {json.dumps(block.get('input'), ensure_ascii=False)}]"
    elif kind == "tool_result":
        inner = block.get("content")
        inner = "\n".join(_texts(inner)) if isinstance(inner, list) else inner
        text = f"[tool result {block.get('tool_use_id')}: {inner}]"
    else:
        return None
    return {"type": "text", "text": text}


def user_content(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's content (the user's, or a past assistant turn's) as blocks Claude Code can send upstream."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    role = "assistant" if message.get("role") == "assistant" else "user"
    kept = [_kept(block, role) for block in content if isinstance(block, dict)] if isinstance(content, list) else []
    return [block for block in kept if block is not None]


def transcript(history: list[dict[str, Any]], session_id: str, cwd: str, model: str) -> list[dict[str, Any]]:
    """``history`` as the lines of a Claude Code session transcript, each linked to the one before."""
    entries: list[dict[str, Any]] = []
    parent: str | None = None
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    for i, message in enumerate(history):
        role = message.get("role")
        content = user_content(message)
        if role not in ("user", "assistant") or not content:
            continue
        body: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            body = {"id": f"msg_history_{i}", "type": "message", **body, "model": model, "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        entry_id = str(uuid.uuid4())
        entries.append({"parentUuid": parent, "isSidechain": False, "type": role, "message": body, "uuid": entry_id,
                        "timestamp": now, "cwd": cwd, "sessionId": session_id, "userType": "external"})
        parent = entry_id
    return entries


class RedisSessionStore:
    """The transcripts in Redis (claude-agent-sdk's ``SessionStore``), so a session resumes on any worker.
    Keyed by session id only (``project_key`` derives from the cwd, and a session resumes in whatever
    directory the next request names); lines deduplicated by ``uuid`` (the SDK's idempotency key); keys
    expire after ``CLAUDE__SESSION_TTL`` unused (no ``delete``: only ``delete_session_via_store`` calls it)."""

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

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.transcript(session_id)))
