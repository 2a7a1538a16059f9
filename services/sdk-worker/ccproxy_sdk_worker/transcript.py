"""The client's conversation as Claude Code takes it: a prompt, and a session behind it.

The last user message is the prompt. What came before it becomes the transcript of a Claude
Code session (the JSONL lines Claude Code itself writes), which the run then resumes: Claude
Code sends those turns upstream as real user and assistant messages, images included, exactly
as if it had had the conversation itself. A conversation that already is a Claude Code session
(the client named it) needs none of this: its transcript is already in Redis.

Only what the Messages API accepts in a past turn is kept: text, images and documents. Blocks
that were ccproxy's own output (``tool_use_sdk``, ``tool_result_sdk``) are dropped, and a
client's own tool calls and results become text, since Claude Code never had those tools.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ccproxy_core.errors import ProxyError

#: Blocks a past turn may carry to the upstream as they are.
KEPT_USER_BLOCKS = frozenset({"text", "image", "document"})


def split_conversation(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(earlier messages, the last user message)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") != "system"]
    if not messages or messages[-1].get("role") != "user":
        raise ProxyError(400, "messages: the last message must be from the user (SDK mode runs Claude Code on it)",
                         param="messages")
    return messages[:-1], messages[-1]


def system_text(body: dict[str, Any]) -> str | None:
    """The client's system prompt as text (Claude Code appends it to its own)."""
    system = body.get("system")
    if isinstance(system, str):
        return system or None
    if isinstance(system, list):
        text = "\n\n".join(b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text")
        return text or None
    return None


def _as_text(block: dict[str, Any]) -> str | None:
    kind = block.get("type")
    if kind == "tool_use":
        return f"[called {block.get('name')} with {json.dumps(block.get('input'), ensure_ascii=False)}]"
    if kind == "tool_result":
        inner = block.get("content")
        if isinstance(inner, list):
            inner = "\n".join(b.get("text", "") for b in inner if isinstance(b, dict) and b.get("type") == "text")
        return f"[tool result {block.get('tool_use_id')}: {inner}]"
    return None


def _content(message: dict[str, Any], kept: Callable[[dict[str, Any]], dict[str, Any] | None]) -> list[dict[str, Any]]:
    """A message's content as blocks: ``kept`` says what a block stays as; any other block
    becomes text (a client's tool call or result) or is dropped."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        out = kept(block)
        if out is None:
            text = _as_text(block)
            out = {"type": "text", "text": text} if text else None
        if out is not None:
            blocks.append(out)
    return blocks


def _kept_user(block: dict[str, Any]) -> dict[str, Any] | None:
    if block.get("type") not in KEPT_USER_BLOCKS:
        return None
    return {k: v for k, v in block.items() if k != "cache_control"}


def _kept_assistant(block: dict[str, Any]) -> dict[str, Any] | None:
    return {"type": "text", "text": block["text"]} if block.get("type") == "text" and block.get("text") else None


def user_content(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A user message's content as blocks Claude Code can send upstream."""
    return _content(message, _kept_user)


def assistant_content(message: dict[str, Any]) -> list[dict[str, Any]]:
    return _content(message, _kept_assistant)


def transcript(history: list[dict[str, Any]], session_id: str, cwd: str, model: str) -> list[dict[str, Any]]:
    """``history`` as the lines of a Claude Code session transcript, each linked to the one before."""
    entries: list[dict[str, Any]] = []
    parent: str | None = None
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    for i, message in enumerate(history):
        role = message.get("role")
        if role == "user":
            content = user_content(message)
            body: dict[str, Any] = {"role": "user", "content": content}
        elif role == "assistant":
            content = assistant_content(message)
            body = {
                "id": f"msg_history_{i}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
        else:
            continue
        if not content:
            continue
        entry_id = str(uuid.uuid4())
        entries.append(
            {
                "parentUuid": parent,
                "isSidechain": False,
                "type": role,
                "message": body,
                "uuid": entry_id,
                "timestamp": now,
                "cwd": cwd,
                "sessionId": session_id,
                "userType": "external",
            }
        )
        parent = entry_id
    return entries
