"""Extended thinking for OpenAI clients: effort to budget, and the round trip (Claude refuses a
tool-use continuation unless the turn's thinking blocks come back exactly, signatures included):
Chat's ``reasoning_content`` + ``thinking_blocks`` (LiteLLM's convention; also remembered here by
text), Responses' reasoning items with the block encoded in ``encrypted_content`` (Codex sends it back)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson

from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import DEFAULT_REASONING_BUDGETS

#: Anthropic's smallest thinking budget.
MIN_BUDGET = 1024
ENCRYPTED_PREFIX = "ccproxy.v1."


def thinking_config(
    effort: str | None,
    budgets: Mapping[str, int],
    max_tokens: int | None,
    default_max_tokens: int,
    param: str = "reasoning_effort",
    model_limit: int | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """(``thinking`` or None, ``max_tokens``). Both APIs' limits count reasoning: with a client limit the
    budget is at most half of it; without, the answer gets ``default_max_tokens`` on top, within ``model_limit``."""
    if effort is None or effort == "none":
        if max_tokens is None:
            max_tokens = min(default_max_tokens, model_limit or default_max_tokens)
        return None, max_tokens
    table = {**DEFAULT_REASONING_BUDGETS, **budgets}
    if effort not in table:
        choices = ", ".join(["none", *table])
        raise ProxyError(400, f"{param}: {effort!r} is not one of {choices}", param=param)
    budget = max(MIN_BUDGET, table[effort])
    if max_tokens is None:
        total = budget + default_max_tokens
        if model_limit and total > model_limit:
            total = model_limit
            budget = max(MIN_BUDGET, min(budget, total // 2))
        return {"type": "enabled", "budget_tokens": budget}, total
    if max_tokens <= MIN_BUDGET:
        raise ProxyError(400, f"the token limit ({max_tokens}) must be above {MIN_BUDGET} when {param} is set: "
                         "Claude's extended thinking needs at least 1024 tokens", param=param)
    return {"type": "enabled", "budget_tokens": max(MIN_BUDGET, min(budget, max_tokens // 2))}, max_tokens


def clean_thinking_block(block: Any, where: str) -> dict[str, Any]:
    """A client-sent thinking block, checked and reduced to what Anthropic accepts."""
    if isinstance(block, dict):
        if block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            if not isinstance(block.get("signature"), str):
                raise ProxyError(400, f"{where}.signature: a thinking block needs its signature", param=where)
            return {"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}
        if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
            return {"type": "redacted_thinking", "data": block["data"]}
    raise ProxyError(400, f"{where}: expected a thinking or redacted_thinking block as ccproxy sent it", param=where)


def joined_reasoning(blocks: list[dict[str, Any]]) -> str:
    """``reasoning_content`` for a message's thinking blocks (redacted ones have no text)."""
    return "\n\n".join(b["thinking"] for b in blocks if b.get("type") == "thinking")


class ReasoningMemory:
    """Thinking blocks by the ``reasoning_content`` they were shown as, for clients that send
    back only that text. Bounded: the oldest entries go first."""

    def __init__(self, capacity: int = 2048) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[bytes, list[dict[str, Any]]] = OrderedDict()

    def remember(self, text: str, blocks: list[dict[str, Any]]) -> None:
        key = hashlib.sha256(text.encode()).digest()
        self._entries[key] = blocks
        self._entries.move_to_end(key)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def recall(self, text: str) -> list[dict[str, Any]] | None:
        return self._entries.get(hashlib.sha256(text.encode()).digest())


#: One per process: the gateway that answered is the one the client comes back to.
REASONING_MEMORY = ReasoningMemory()


def encode_reasoning(block: dict[str, Any]) -> str:
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(orjson.dumps(block)).decode()


def decode_reasoning(encrypted: str | None) -> dict[str, Any] | None:
    """The thinking block behind an ``encrypted_content`` ccproxy made; None for anything else
    (reasoning from another provider cannot be replayed to Claude and is dropped)."""
    if not encrypted or not encrypted.startswith(ENCRYPTED_PREFIX):
        return None
    try:
        block = orjson.loads(base64.urlsafe_b64decode(encrypted[len(ENCRYPTED_PREFIX) :]))
        return clean_thinking_block(block, "encrypted_content")
    except (binascii.Error, ValueError, ProxyError):
        return None
