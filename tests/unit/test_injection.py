"""Header and system-prompt injection: the rules in DESIGN.md "Upstream facts"."""

from __future__ import annotations

from typing import Any

from ccproxy_core.tokens import Credential
from ccproxy_forwarder.injection import (
    IDENTITY,
    has_identity,
    inject_identity,
    merge_betas,
    upstream_headers,
)

OAUTH = Credential(kind="oauth", secret="sk-ant-oat01-secret", account="a")
API_KEY = Credential(kind="api_key", secret="sk-ant-api03-secret", account="k")


def count_cache_breakpoints(body: dict[str, Any]) -> int:
    def walk(node: Any) -> int:
        if isinstance(node, dict):
            own = 1 if isinstance(node.get("cache_control"), dict) else 0
            return own + sum(walk(v) for k, v in node.items() if k != "cache_control")
        if isinstance(node, list):
            return sum(walk(item) for item in node)
        return 0

    return sum(walk(body.get(key)) for key in ("tools", "system", "messages"))


def test_client_credentials_and_hop_by_hop_headers_are_dropped() -> None:
    headers = upstream_headers(
        {
            "x-api-key": "client-key",
            "Authorization": "Bearer client",
            "host": "proxy",
            "connection": "keep-alive",
            "x-forwarded-for": "1.2.3.4",
            "x-claude-code-session-id": "s1",
            "anthropic-version": "2023-01-01",
        },
        OAUTH,
    )
    assert headers["authorization"] == "Bearer sk-ant-oat01-secret"
    assert "x-api-key" not in headers and "host" not in headers and "connection" not in headers
    assert "x-forwarded-for" not in headers
    assert headers["x-claude-code-session-id"] == "s1"
    assert headers["anthropic-version"] == "2023-01-01"


def test_api_key_accounts_use_x_api_key_and_no_oauth_betas() -> None:
    headers = upstream_headers({"authorization": "Bearer client"}, API_KEY)
    assert headers["x-api-key"] == "sk-ant-api03-secret"
    assert "authorization" not in headers
    assert "anthropic-beta" not in headers
    assert headers["anthropic-version"] == "2023-06-01"


def test_betas_are_merged_without_duplicates_and_client_betas_kept() -> None:
    merged = merge_betas(
        "context-1m-2025-08-07, oauth-2025-04-20,interleaved-thinking-2025-05-14",
        ("oauth-2025-04-20", "claude-code-20250219"),
    )
    assert merged.split(",") == [
        "context-1m-2025-08-07",
        "oauth-2025-04-20",
        "interleaved-thinking-2025-05-14",
        "claude-code-20250219",
    ]


def test_identity_opens_a_string_system_prompt() -> None:
    body = inject_identity({"system": "Be brief.", "messages": []})
    assert body["system"] == [{"type": "text", "text": IDENTITY}, {"type": "text", "text": "Be brief."}]


def test_identity_keeps_client_blocks_and_cache_control_unchanged() -> None:
    blocks = [
        {"type": "text", "text": "A", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}},
    ]
    body = {"system": blocks, "messages": [], "future_field": {"x": 1}}
    out = inject_identity(body)
    assert out["system"][0] == {"type": "text", "text": IDENTITY}
    assert out["system"][1:] == blocks
    assert out["future_field"] == {"x": 1}
    assert count_cache_breakpoints(out) == count_cache_breakpoints(body) == 2


def test_identity_not_added_when_the_client_sent_one() -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=sdk-cli;"},
        {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."},
        {"type": "text", "text": "rest", "cache_control": {"type": "ephemeral"}},
    ]
    assert has_identity(system)
    body = {"system": system, "messages": []}
    assert inject_identity(body) is body


def test_no_system_prompt_gets_just_the_identity() -> None:
    assert inject_identity({"messages": []})["system"] == [{"type": "text", "text": IDENTITY}]


def test_breakpoints_are_counted_everywhere() -> None:
    body = {
        "tools": [{"name": "t", "cache_control": {"type": "ephemeral"}}],
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "m", "cache_control": {"type": "ephemeral"}}]}
        ],
    }
    assert count_cache_breakpoints(body) == 3
