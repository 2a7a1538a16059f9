"""The checks api.anthropic.com makes, as far as DESIGN.md "Upstream facts" knows them.

Authentication (API key or OAuth bearer + the OAuth beta), the Claude Code identity that a
subscription token requires, the 4-breakpoint cache_control limit, and the body validation that
matters for a proxy (tool_result pairing, thinking signatures, base64 images). Everything else,
including unknown fields and unknown block types, is accepted, as the real API's passthrough
tests need.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from tests.fake_upstream.errors import FakeApiError
from tests.fake_upstream.state import FakeState, fingerprint

OAUTH_BETA = "oauth-2025-04-20"
CLAUDE_CODE_IDENTITIES = (
    "You are Claude Code, Anthropic's official CLI for Claude.",
    "You are Claude Code, Anthropic's official CLI for Claude, running within the Claude Agent SDK.",
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
)
BILLING_PREFIX = "x-anthropic-billing-header:"
IDENTITY_REQUIRED = (
    "This credential is only authorized for use with Claude Code and cannot be used for other API requests."
)
MAX_CACHE_BREAKPOINTS = 4
IMAGE_MEDIA_TYPES = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_SIGNING_KEY = b"ccproxy-fake-upstream-thinking"


@dataclass
class Caller:
    kind: str  # "oauth" | "api_key"
    secret: str
    account: str | None = None
    subscription_type: str | None = None

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "fingerprint": fingerprint(self.secret)}


def betas(headers: dict[str, str]) -> list[str]:
    return [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]


def presented(headers: dict[str, str]) -> dict[str, str] | None:
    """The credential a request carries, as a fingerprint (recorded even when it is refused)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return {"kind": "bearer", "fingerprint": fingerprint(token.strip())}
    if headers.get("x-api-key"):
        return {"kind": "x-api-key", "fingerprint": fingerprint(headers["x-api-key"])}
    return None


def authenticate(state: FakeState, headers: dict[str, str]) -> Caller:
    """Who is calling; raises the 401 the real API gives otherwise."""
    api_key = headers.get("x-api-key")
    authorization = headers.get("authorization", "")
    if api_key and not authorization:
        if api_key not in state.api_keys:
            raise FakeApiError(401, "invalid x-api-key")
        return Caller("api_key", api_key)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        if api_key:
            raise FakeApiError(401, "invalid x-api-key")
        raise FakeApiError(401, "x-api-key header is required")
    token = token.strip()
    if token in state.api_keys:
        # Current SDKs send API keys as bearer tokens too.
        return Caller("api_key", token)
    access = state.access.get(token)
    if access is None or access.revoked:
        raise FakeApiError(401, "Invalid bearer token")
    if access.expires_at <= time.time():
        raise FakeApiError(
            401, "OAuth token has expired. Please obtain a new token or refresh your existing token."
        )
    if OAUTH_BETA not in betas(headers):
        raise FakeApiError(401, "OAuth authentication is currently not supported.")
    return Caller("oauth", token, access.account, access.subscription_type)


def check_version(headers: dict[str, str]) -> None:
    if not headers.get("anthropic-version"):
        raise FakeApiError(400, "anthropic-version: header is required")


def system_blocks(system: Any) -> list[Any]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"type": "text", "text": system}]
    if isinstance(system, list):
        return system
    raise FakeApiError(400, "system: Input should be a valid string or a list of text blocks")


def check_identity(body: dict[str, Any]) -> None:
    """A subscription token only works when the system prompt opens with a Claude Code identity
    (an ``x-anthropic-billing-header`` block may come first)."""
    for block in system_blocks(body.get("system")):
        if not isinstance(block, dict) or block.get("type") != "text":
            break
        text = str(block.get("text", ""))
        if text.startswith(BILLING_PREFIX):
            continue
        if any(text.startswith(identity) for identity in CLAUDE_CODE_IDENTITIES):
            return
        break
    raise FakeApiError(400, IDENTITY_REQUIRED)


def cache_breakpoints(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``cache_control`` object in tools, system and messages, in prompt order."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("cache_control"), dict):
                found.append(node["cache_control"])
            for key, value in node.items():
                if key != "cache_control":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for key in ("tools", "system", "messages"):
        walk(body.get(key))
    return found


def check_cache_control(body: dict[str, Any]) -> None:
    n = len(cache_breakpoints(body))
    if n > MAX_CACHE_BREAKPOINTS:
        raise FakeApiError(
            400, f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {n}."
        )


def sign_thinking(thinking: str) -> str:
    digest = hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"fake-sig\x00" + digest * 3).decode()


def check_body(body: dict[str, Any], *, count_tokens: bool = False) -> None:
    """The validation a proxy can get wrong; unknown fields and block types pass."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeApiError(400, "model: Field required")
    if not count_tokens:
        if "max_tokens" not in body:
            raise FakeApiError(400, "max_tokens: Field required")
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            raise FakeApiError(400, "max_tokens: Input should be a valid integer greater than 0")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise FakeApiError(400, "messages: Field required")
    if not count_tokens and not messages:
        raise FakeApiError(400, "messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
            raise FakeApiError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise FakeApiError(400, f"messages.{i}.content.{j}: a content block needs a type")
                _check_block(f"messages.{i}.content.{j}", block, message["role"])
        elif not isinstance(content, str):
            raise FakeApiError(400, f"messages.{i}.content: Input should be a string or a list of blocks")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        # The real API's answer (a proxy passes the field through; the fake used to crash on it).
        raise FakeApiError(400, "tools: Input should be a valid list")
    _check_tool_pairing(messages)
    check_cache_control(body)


def _check_block(where: str, block: dict[str, Any], role: str) -> None:
    kind = block["type"]
    if kind == "thinking":
        if role != "assistant":
            raise FakeApiError(400, f"{where}: thinking blocks may only appear in assistant messages")
        if block.get("signature") != sign_thinking(str(block.get("thinking", ""))):
            raise FakeApiError(400, f"{where}: Invalid `signature` in `thinking` block")
    elif kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            media_type = source.get("media_type")
            if media_type not in IMAGE_MEDIA_TYPES:
                raise FakeApiError(
                    400,
                    f"{where}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                    "'image/gif' or 'image/webp'",
                )
            try:
                raw = base64.b64decode(str(source.get("data", "")), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FakeApiError(400, f"{where}.image.source.base64: invalid base64 data") from exc
            if not raw.startswith(IMAGE_MEDIA_TYPES[media_type]):
                raise FakeApiError(
                    400, f"{where}.image.source.base64: Image does not match the provided media type {media_type}"
                )


def _check_tool_pairing(messages: list[dict[str, Any]]) -> None:
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        results = [b.get("tool_use_id") for b in content if b.get("type") == "tool_result"]
        if not results:
            continue
        previous = messages[i - 1] if i > 0 else {}
        prev_content = previous.get("content") if previous.get("role") == "assistant" else None
        uses = {b.get("id") for b in prev_content or [] if isinstance(b, dict) and b.get("type") == "tool_use"}
        for tool_use_id in results:
            if tool_use_id not in uses:
                raise FakeApiError(
                    400,
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block "
                    "in the previous message.",
                )
