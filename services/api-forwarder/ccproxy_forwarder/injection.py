"""What a subscription's OAuth token needs on a request, and nothing more.

Pure functions over headers and the parsed body, so they are easy to test: drop the client's
credentials and hop-by-hop headers, set ours, merge the required betas into the client's, and
open the system prompt with a Claude Code identity unless the client already sent one.
"""

from __future__ import annotations

from typing import Any

from ccproxy_core.tokens import Credential

REQUIRED_OAUTH_BETAS = ("oauth-2025-04-20", "claude-code-20250219")

#: The identities the Claude Code CLI itself sends, by entry point.
CLAUDE_CODE_IDENTITIES = (
    "You are Claude Code, Anthropic's official CLI for Claude.",
    "You are Claude Code, Anthropic's official CLI for Claude, running within the Claude Agent SDK.",
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
)
IDENTITY = CLAUDE_CODE_IDENTITIES[0]
#: ``anthropic-version`` sent when the client sent none (``AnthropicSettings.version``'s default).
DEFAULT_VERSION = "2023-06-01"

_DROPPED_HEADERS = frozenset(
    {
        "x-api-key",
        "authorization",
        "host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
        "cookie",
    }
)


def upstream_headers(
    client_headers: dict[str, str], credential: Credential, version: str = DEFAULT_VERSION
) -> dict[str, str]:
    """The headers to send upstream, built from the client's; ``anthropic-version`` is
    ``version`` (``ANTHROPIC__VERSION``) when the client sent none."""
    headers: dict[str, str] = {}
    for name, value in client_headers.items():
        lower = name.lower()
        if lower in _DROPPED_HEADERS or lower.startswith(("x-forwarded-", "x-ccproxy-", "x-real-ip")):
            continue
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
    if isinstance(system, list):
        return list(system)
    return [system]


def has_identity(system: Any) -> bool:
    """Did the client already open its system prompt with a Claude Code identity?"""
    for block in _system_blocks(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            continue
        text = str(block.get("text", ""))
        if text.startswith("x-anthropic-billing-header:"):
            continue  # the CLI's billing block comes before its identity
        return any(text.startswith(identity) for identity in CLAUDE_CODE_IDENTITIES)
    return False


def count_cache_breakpoints(body: dict[str, Any]) -> int:
    """cache_control markers anywhere in tools, system and messages."""

    def walk(node: Any) -> int:
        if isinstance(node, dict):
            own = 1 if isinstance(node.get("cache_control"), dict) else 0
            return own + sum(walk(v) for k, v in node.items() if k != "cache_control")
        if isinstance(node, list):
            return sum(walk(item) for item in node)
        return 0

    return sum(walk(body.get(key)) for key in ("tools", "system", "messages"))


def inject_identity(body: dict[str, Any]) -> dict[str, Any]:
    """Open the system prompt with the identity; keep the client's blocks unchanged after it.

    The identity carries no cache_control of its own: the client's breakpoints (at most 4) stay
    as they are, so injection can never push a request over the limit.
    """
    system = body.get("system")
    if has_identity(system):
        return body
    identity = {"type": "text", "text": IDENTITY}
    return {**body, "system": [identity, *_system_blocks(system)]}
