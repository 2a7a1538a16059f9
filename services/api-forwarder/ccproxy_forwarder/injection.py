"""What a subscription's OAuth token needs on a request, and nothing more (pure functions, so
each rule is tested on its own: tests/unit/test_injection.py)."""

from __future__ import annotations

from typing import Any

from ccproxy_core.forwarding import HOP_BY_HOP
from ccproxy_core.tokens import Credential

REQUIRED_OAUTH_BETAS = ("oauth-2025-04-20", "claude-code-20250219")

#: The identities the Claude Code CLI itself sends, by entry point.
CLAUDE_CODE_IDENTITIES = (
    "You are Claude Code, Anthropic's official CLI for Claude.",
    "You are Claude Code, Anthropic's official CLI for Claude, running within the Claude Agent SDK.",
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
)
IDENTITY = CLAUDE_CODE_IDENTITIES[0]
DEFAULT_VERSION = "2023-06-01"

#: The client's credentials, its cookies, and what describes its connection to us. No
#: accept-encoding: the answer is relayed as raw bytes and read for usage, so it must not be gzipped.
_DROPPED_HEADERS = HOP_BY_HOP | {"x-api-key", "authorization", "proxy-connection", "accept-encoding", "cookie"}


def upstream_headers(
    client_headers: dict[str, str], credential: Credential, version: str = DEFAULT_VERSION
) -> dict[str, str]:
    """The client's headers, less its credentials and ours (``x-ccproxy-*``), with the account's
    credential; ``anthropic-version`` is ``version`` (``ANTHROPIC__VERSION``) when the client sent none."""
    headers: dict[str, str] = {}
    for name, value in client_headers.items():
        lower = name.lower()
        if lower not in _DROPPED_HEADERS and not lower.startswith(("x-forwarded-", "x-ccproxy-", "x-real-ip")):
            headers[lower] = value
    if not headers.get("anthropic-version"):
        headers["anthropic-version"] = version
    headers["content-type"] = "application/json"
    secret = credential.secret.get_secret_value()
    if credential.kind == "oauth":
        headers["authorization"] = f"Bearer {secret}"
        headers["anthropic-beta"] = merge_betas(headers.get("anthropic-beta"), REQUIRED_OAUTH_BETAS)
    else:
        headers["x-api-key"] = secret
    return headers


def merge_betas(client_value: str | None, required: tuple[str, ...]) -> str:
    """The client's betas, in order, then the required ones it lacked; no duplicates."""
    seen: list[str] = []
    for beta in [*(client_value or "").split(","), *required]:
        beta = beta.strip()
        if beta and beta not in seen:
            seen.append(beta)
    return ",".join(seen)


def _system_blocks(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"type": "text", "text": system}]
    return list(system) if isinstance(system, list) else [system]


def has_identity(system: Any) -> bool:
    for block in _system_blocks(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            continue
        text = str(block.get("text", ""))
        if text.startswith("x-anthropic-billing-header:"):
            continue  # the CLI's billing block comes before its identity
        return text.startswith(CLAUDE_CODE_IDENTITIES)
    return False


def inject_identity(body: dict[str, Any]) -> dict[str, Any]:
    """Open the system prompt with the identity; keep the client's blocks unchanged after it. The
    identity has no cache_control of its own, so the client's breakpoints (at most 4) stay within the limit."""
    if has_identity(body.get("system")):
        return body
    return {**body, "system": [{"type": "text", "text": IDENTITY}, *_system_blocks(body.get("system"))]}
