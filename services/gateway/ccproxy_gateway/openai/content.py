"""Content pieces both OpenAI APIs share: images, files, tool definitions, finish reasons, usage."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from ccproxy_core.errors import ProxyError

#: An Anthropic content block.
Block = dict[str, Any]


class Part(Protocol):
    """An OpenAI content part (models.py) that knows its Anthropic block."""

    def block(self, where: str) -> Block | None: ...


def text_block(text: str | None) -> Block | None:
    return {"type": "text", "text": text} if text else None


def content_blocks(content: str | Sequence[Part], where: str) -> list[Block]:
    """A message's content as blocks (``where``: the parts' path, for errors); empty text is left out."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = [part.block(f"{where}.{j}") for j, part in enumerate(content)]
    return [block for block in blocks if block is not None]


_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_PDF = frozenset({"application/pdf"})
_IMAGE_URLS = "an http(s) URL or a base64 data URL of " + ", ".join(sorted(IMAGE_TYPES))


def _base64_source(url: str, media_types: frozenset[str], where: str, expected: str) -> dict[str, Any]:
    """A base64 data URL of one of ``media_types`` as an Anthropic source; else a 400."""
    match = _DATA_URL.match(url)
    media = (match["media"] or "").lower().replace("image/jpg", "image/jpeg") if match else ""
    if match is None or media not in media_types or ";base64" not in match["params"]:
        raise ProxyError(400, f"{where}: expected {expected}", param=where)
    return {"type": "base64", "media_type": media, "data": match["data"]}


def image_block(url: str, where: str) -> Block:
    """Data URLs inline (base64), http(s) URLs as URL sources."""
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    return {"type": "image", "source": _base64_source(url, IMAGE_TYPES, where, _IMAGE_URLS)}


def file_block(file_data: str | None, file_id: str | None, where: str, filename: str | None = None) -> Block:
    """A PDF sent inline as a document block; file ids need OpenAI's file store, which ccproxy has not."""
    if file_id and not file_data:
        raise ProxyError(400, f"{where}: file ids are not supported; send the file inline as file_data", param=where)
    block = {"type": "document", "source": _base64_source(file_data or "", _PDF, where, "a PDF as a base64 data URL")}
    if filename:
        block["title"] = filename
    return block


def anthropic_tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> dict[str, Any]:
    schema = parameters or {"type": "object", "properties": {}}
    if "type" not in schema:
        schema = {"type": "object", **schema}  # OpenAI tolerates it missing; Claude requires it
    tool: dict[str, Any] = {"name": name, "input_schema": schema}
    if description:
        tool["description"] = description
    return tool


def tool_use(call_id: str, name: str, arguments: str, where: str) -> Block:
    """A tool call as Claude's ``tool_use`` block; its JSON ``arguments`` must be the object ``input`` is."""
    args: Any = {}
    if arguments.strip():
        try:
            args = orjson.loads(arguments)
        except orjson.JSONDecodeError as exc:
            raise ProxyError(400, f"{where}: not valid JSON ({exc})", param=where) from exc
        if not isinstance(args, dict):
            raise ProxyError(400, f"{where}: must be a JSON object", param=where)
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def tool_result(call_id: str, content: str | Sequence[Part], where: str) -> Block:
    """A tool's output as Claude's ``tool_result`` block: text as is, parts as blocks."""
    return {"type": "tool_result", "tool_use_id": call_id,
            "content": content if isinstance(content, str) else content_blocks(content, where)}


#: Blocks Claude accepts a cache_control on (not thinking blocks).
_CACHEABLE = frozenset({"text", "image", "document", "tool_use", "tool_result"})


def add_cache_breakpoints(body: dict[str, Any]) -> None:
    """OpenAI caches prompt prefixes by itself, Claude only where told: two breakpoints (of four), the
    end of the system prompt (stable across turns) and of the conversation (the next turn reads it)."""
    marker = {"type": "ephemeral"}
    system = body.get("system")
    if system and system[-1].get("type") == "text":
        system[-1] = {**system[-1], "cache_control": marker}
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list) and content and content[-1].get("type") in _CACHEABLE:
        content[-1] = {**content[-1], "cache_control": marker}


#: Anthropic stop_reason to OpenAI finish_reason.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "end_turn", "stop")
