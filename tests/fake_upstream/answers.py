"""The deterministic answer to a Messages request, and its usage numbers.

The answer is derived from the request so a test can check it end to end: by default the text is
``Echo: <last user text>``; markers add a thinking block, a tool_use, JSON, or an echo of what
the fake received. Usage: input tokens from the body size (4 bytes a token), cache numbers from
cache_control breakpoints (first sight of a prefix creates it, later sights read it).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tests.fake_upstream.rules import sign_thinking, system_blocks
from tests.fake_upstream.scenarios import Scenario, last_user_message, strip_markers, text_of
from tests.fake_upstream.state import FakeState, fingerprint
from tests.fake_upstream.tool_script import scripted_call

SECRET_HEADERS = ("authorization", "x-api-key", "cookie", "proxy-authorization")


@dataclass
class Answer:
    message_id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, Any]
    #: Text deltas per text block index, when streamed.
    text_chunks: dict[int, list[str]] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self.usage,
        }


def tokens_of(value: Any) -> int:
    return max(1, len(json.dumps(value, separators=(",", ":"))) // 4)


def usage_for(state: FakeState, body: dict[str, Any], output_tokens: int) -> dict[str, Any]:
    """Input, cache-creation and cache-read tokens, split at the last cache_control breakpoint."""
    blocks: list[Any] = []
    blocks.extend(body.get("tools") or [])
    blocks.extend(system_blocks(body.get("system")))
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        blocks.extend(content if isinstance(content, list) else [{"type": "text", "text": content}])
    last = -1
    ttl_1h = False
    for i, block in enumerate(blocks):
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
            last = i
            ttl_1h = ttl_1h or block["cache_control"].get("ttl") == "1h"
    total = tokens_of(blocks)
    created = read = 0
    if last >= 0:
        prefix = blocks[: last + 1]
        key = hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
        prefix_tokens = min(tokens_of(prefix), total)
        if key in state.cache_prefixes:
            read = prefix_tokens
        else:
            state.cache_prefixes[key] = prefix_tokens
            created = prefix_tokens
    usage: dict[str, Any] = {
        "input_tokens": max(1, total - created - read),
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 0 if ttl_1h else created,
            "ephemeral_1h_input_tokens": created if ttl_1h else 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    return usage


def value_for_schema(schema: Any, name: str = "value") -> Any:
    """A deterministic value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict):
        return f"fake-{name}"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return 42
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [value_for_schema(schema.get("items"), name)]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        wanted = schema.get("required") or list(props)
        return {key: value_for_schema(props.get(key), key) for key in wanted}
    return f"fake-{name}"


def chosen_tool(body: dict[str, Any], scenario: Scenario) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    choice = body.get("tool_choice") or {}
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not tools or kind == "none":
        return None
    if kind == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    if kind == "any" or scenario.tool:
        return tools[0]
    return None


def redacted_headers(headers: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name in SECRET_HEADERS:
            scheme, sep, token = value.partition(" ")
            out[name] = f"{scheme} {fingerprint(token)}" if sep and scheme.lower() == "bearer" else fingerprint(value)
        else:
            out[name] = value
    return out


def _images(message: dict[str, Any] | None) -> list[str]:
    found: list[str] = []
    content = message.get("content") if message else None
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "image":
            source = block.get("source") or {}
            if source.get("type") == "base64":
                size = len(base64.b64decode(source.get("data", "")))
                found.append(f"{source.get('media_type')} {size} bytes")
            else:
                found.append(str(source.get("type")))
    return found


def _tool_results(message: dict[str, Any] | None) -> list[str]:
    content = message.get("content") if message else None
    results = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            results.append(f"{block.get('tool_use_id')}={text_of(inner) if not isinstance(inner, str) else inner}")
    return results


def answer_text(body: dict[str, Any], scenario: Scenario, request: dict[str, Any]) -> str:
    user = last_user_message(body)
    said = strip_markers(text_of(user.get("content")) if user else "")
    if scenario.echo_request:
        return json.dumps(
            {
                "method": request["method"],
                "path": request["path"],
                "query": request["query"],
                "headers": redacted_headers(request["headers"]),
                "betas": [b.strip() for b in request["headers"].get("anthropic-beta", "").split(",") if b.strip()],
                "system": body.get("system"),
                "body": body,
            },
            sort_keys=True,
        )
    if scenario.json:
        return json.dumps({"echo": said, "ok": True, "n": len(said)})
    if scenario.long:
        return "".join(f"word{i} " for i in range(scenario.long)).rstrip()
    parts = [f"Echo: {said}" if said else "Hello from the fake upstream."]
    images = _images(user)
    if images:
        parts.append(f"[saw {len(images)} image(s): {', '.join(images)}]")
    results = _tool_results(user)
    if results:
        parts.append(f"[tool results: {'; '.join(results)}]")
    return " ".join(parts)


def _prefill(body: dict[str, Any]) -> str | None:
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return text_of(messages[-1].get("content"))
    return None


def split_text(text: str, pieces: int) -> list[str]:
    """``text`` in ``pieces`` parts (at word boundaries when possible), never empty parts."""
    if not text:
        return [""]
    words = text.split(" ")
    if len(words) >= pieces:
        size = -(-len(words) // pieces)
        chunks = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
        return [c + (" " if i < len(chunks) - 1 else "") for i, c in enumerate(chunks)]
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def build_answer(state: FakeState, body: dict[str, Any], scenario: Scenario, request: dict[str, Any]) -> Answer:
    content: list[dict[str, Any]] = []
    chunks: dict[int, list[str]] = {}
    user = last_user_message(body)
    said = strip_markers(text_of(user.get("content")) if user else "")
    if scenario.thinking:
        thinking = f"The user said {said!r}. I should answer it plainly."
        content.append({"type": "thinking", "thinking": thinking, "signature": sign_thinking(thinking)})
    text = answer_text(body, scenario, request)
    prefill = _prefill(body)
    if prefill is not None:
        stripped = prefill.rstrip()
        text = text[len(stripped):] if stripped and text.startswith(stripped) else " " + text
    tool = chosen_tool(body, scenario)
    scripted = scripted_call(scenario)  # [[fake:call=NAME?k=v]] (tool_script.py)
    if scripted is not None:
        tool = {"name": scripted[0]}
    stop_reason = "end_turn"
    max_tokens = body.get("max_tokens") or 4096
    words = text.split(" ")
    if len(words) > max_tokens:
        text = " ".join(words[:max_tokens])
        stop_reason = "max_tokens"
        tool = None
    if tool is not None:
        text = f"I'll call {tool['name']}."
    content.append({"type": "text", "text": text})
    chunks[len(content) - 1] = split_text(text, scenario.long or 4)
    if tool is not None:
        content.append(
            {
                "type": "tool_use",
                "id": state.next_id("toolu"),
                "name": tool["name"],
                "input": scripted[1] if scripted is not None
                else value_for_schema(tool.get("input_schema") or {"type": "object"}),
            }
        )
        stop_reason = "tool_use"
    output_tokens = sum(tokens_of(block) for block in content)
    return Answer(
        message_id=state.next_id("msg"),
        model=str(body.get("model")),
        content=content,
        stop_reason=stop_reason,
        usage=usage_for(state, body, output_tokens),
        text_chunks=chunks,
    )
