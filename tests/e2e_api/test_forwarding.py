"""Forwarding exactly as DESIGN.md "Upstream facts" says, checked on what the fake upstream
actually received: credentials swapped, betas merged, the identity injected only when absent,
the client's system prompt and cache_control kept unchanged after it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx2 as httpx
import pytest

from tests.e2e_api.conftest import CLIENT_KEY, IDENTITY, MODEL, ApiServer

IDENTITY_BLOCK = {"type": "text", "text": IDENTITY}
REQUIRED_BETAS = ["oauth-2025-04-20", "claude-code-20250219"]


def send(api: ApiServer, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST through ccproxy; return what the upstream saw."""
    all_headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01", **(headers or {})}
    resp = httpx.post(api.url + "/api/v1/messages", json=body, headers=all_headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return api.upstream(resp.headers.get("request-id"))


def body_with(system: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    if system is not None:
        body["system"] = system
    return body | extra


def test_client_credentials_never_reach_upstream(api: ApiServer) -> None:
    seen = send(api, body_with(), headers={
        "authorization": "Bearer client-bearer-secret-123",
        "cookie": "session=client-cookie",
        "x-forwarded-for": "10.1.2.3",
        "x-forwarded-host": "evil.example",
        "x-real-ip": "10.1.2.3",
        "proxy-authorization": "Basic Zm9vOmJhcg==",
        "x-custom-client-header": "kept",
    })
    headers = seen["headers"]
    assert headers["authorization"] == f"Bearer {api.access_token}"
    assert "x-api-key" not in headers
    for dropped in ("cookie", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "proxy-authorization"):
        assert dropped not in headers, dropped
    assert headers["x-custom-client-header"] == "kept"
    assert CLIENT_KEY not in str(seen) and "client-bearer-secret-123" not in str(seen)
    assert headers["host"] == api.fake.url.removeprefix("http://")
    # The fake gzips JSON for clients that accept it (like the real API); ccproxy relays raw
    # bytes, so it must not ask for compression.
    assert "gzip" not in headers.get("accept-encoding", "")


def test_sdk_client_key_is_replaced(api: ApiServer) -> None:
    msg = api.client().messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    seen = api.upstream(msg._request_id)
    assert seen["auth"] == {"kind": "oauth", "fingerprint": api.fake.fingerprint(api.access_token)}
    assert CLIENT_KEY not in str(seen["headers"])


def test_anthropic_version_default_and_kept(api: ApiServer) -> None:
    resp = httpx.post(api.url + "/api/v1/messages", json=body_with(), timeout=30)
    assert resp.status_code == 200, resp.text
    assert api.upstream(resp.headers["request-id"])["headers"]["anthropic-version"] == "2023-06-01"
    kept = send(api, body_with(), headers={"anthropic-version": "2026-10-21"})
    assert kept["headers"]["anthropic-version"] == "2026-10-21"


@pytest.mark.parametrize(
    ("client_betas", "expected"),
    [
        (None, REQUIRED_BETAS),
        ("context-1m-2025-08-07", ["context-1m-2025-08-07", *REQUIRED_BETAS]),
        (
            "interleaved-thinking-2025-05-14, oauth-2025-04-20,context-1m-2025-08-07",
            ["interleaved-thinking-2025-05-14", "oauth-2025-04-20", "context-1m-2025-08-07", "claude-code-20250219"],
        ),
    ],
)
def test_betas_merged_without_losing_the_clients(api: ApiServer, client_betas: str | None,
                                                 expected: list[str]) -> None:
    seen = send(api, body_with(), headers={"anthropic-beta": client_betas} if client_betas else {})
    assert seen["headers"]["anthropic-beta"].split(",") == expected


def test_identity_added_when_there_is_no_system_prompt(api: ApiServer) -> None:
    assert send(api, body_with())["body"]["system"] == [IDENTITY_BLOCK]


def test_string_system_prompt_kept_after_identity(api: ApiServer) -> None:
    seen = send(api, body_with("You are a terse assistant."))
    assert seen["body"]["system"] == [IDENTITY_BLOCK, {"type": "text", "text": "You are a terse assistant."}]


def test_block_system_prompt_with_cache_control_kept_unchanged(api: ApiServer) -> None:
    blocks = [
        {"type": "text", "text": "Long stable instructions.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "More.", "cache_control": {"type": "ephemeral"}, "citations": None},
    ]
    seen = send(api, body_with(blocks))
    assert seen["body"]["system"] == [IDENTITY_BLOCK, *blocks]
    assert "cache_control" not in seen["body"]["system"][0]


@pytest.mark.parametrize(
    "system",
    [
        [{"type": "text", "text": IDENTITY}, {"type": "text", "text": "extra"}],
        [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cc_entrypoint=sdk-py;"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude, running within the "
                                     "Claude Agent SDK.", "cache_control": {"type": "ephemeral"}},
        ],
        [{"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."}],
    ],
    ids=["cli", "billing+agent-sdk", "agent"],
)
def test_identity_not_added_when_present(api: ApiServer, system: list[dict[str, Any]]) -> None:
    assert send(api, body_with(system))["body"]["system"] == system


def test_four_breakpoints_stay_four(api: ApiServer) -> None:
    cc = {"type": "ephemeral"}
    body = body_with(
        [{"type": "text", "text": "sys", "cache_control": cc}],
        tools=[{"name": "t", "input_schema": {"type": "object"}, "cache_control": cc}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": cc}]},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": [{"type": "text", "text": "c", "cache_control": cc}]},
        ],
    )
    seen = send(api, body)
    text = str(seen["body"])
    assert text.count("cache_control") == 4
    assert seen["body"]["system"][0] == IDENTITY_BLOCK


def test_cache_usage_reported(api: ApiServer) -> None:
    # A prefix of this run's own: the fake remembers every prefix it has seen.
    system = [{"type": "text", "text": f"cache me {uuid.uuid4()} " * 100, "cache_control": {"type": "ephemeral"}}]
    client = api.client()
    first = client.messages.create(model=MODEL, max_tokens=10, system=system,
                                   messages=[{"role": "user", "content": "q1"}])
    second = client.messages.create(model=MODEL, max_tokens=10, system=system,
                                    messages=[{"role": "user", "content": "q2"}])
    assert first.usage.cache_creation_input_tokens and second.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_upstream_connections_pooled(api: ApiServer) -> None:
    """Sequential requests reuse one kept-alive upstream connection (same client port)."""
    client = api.client()
    ids = [client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": f"p{i}"}])
           ._request_id for i in range(6)]
    ports = {api.upstream(i)["client_port"] for i in ids}
    assert len(ports) == 1, ports
