"""How a 429/529 is read, and what keeps a conversation on one account (pure functions)."""

from __future__ import annotations

import time

from ccproxy_auth.pool import quota_windows, read_limit
from ccproxy_core.routing import cached_prefix, session_key
from ccproxy_core.settings import Settings

SETTINGS = Settings(auth={"throttle_wait_seconds": 10, "default_cooldown_seconds": 60,
                          "overload_cooldown_seconds": 15})


def test_spent_quota_cools_down_until_the_windows_reset() -> None:
    now = time.time()
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-representative-claim": "seven_day",
        "anthropic-ratelimit-unified-7d-status": "rejected",
        "anthropic-ratelimit-unified-7d-utilization": "1.0",
        "anthropic-ratelimit-unified-7d-reset": str(int(now + 86400)),
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": "0.3",
        "retry-after": "5",
    }
    verdict = read_limit(429, headers, SETTINGS, now)
    assert verdict.reason == "quota:seven_day" and verdict.wait is None
    assert verdict.until is not None and abs(verdict.until - (now + 86400)) < 2
    assert quota_windows(headers)["5h"].utilization == 0.3


def test_throttles_and_overloads() -> None:
    now = time.time()
    assert read_limit(429, {"retry-after": "3"}, SETTINGS, now).wait == 3
    long = read_limit(429, {"retry-after": "30"}, SETTINGS, now)
    assert long.reason == "throttle" and long.until == now + 30
    bare = read_limit(429, {"anthropic-ratelimit-unified-status": "allowed"}, SETTINGS, now)
    assert bare.reason == "rate_limited" and bare.until == now + 60
    assert read_limit(529, {}, SETTINGS, now).until == now + 15


def test_session_key_prefers_user_id_then_session_header_then_cached_prefix() -> None:
    body = {"model": "m", "metadata": {"user_id": "u1"}, "messages": [{"role": "user", "content": "hi"}]}
    assert session_key(body, {}) == session_key({**body, "messages": []}, {})
    assert session_key({"model": "m", "messages": []}, {"x-claude-code-session-id": "s"}).startswith("s:")
    cached = {"model": "m", "system": [{"type": "text", "text": "ctx", "cache_control": {"type": "ephemeral"}}],
              "messages": [{"role": "user", "content": "turn 1"}]}
    later = {**cached, "messages": [*cached["messages"], {"role": "assistant", "content": "a"},
                                    {"role": "user", "content": "turn 2"}]}
    assert session_key(cached, {}) == session_key(later, {}) is not None
    assert cached_prefix({"model": "m", "messages": [{"role": "user", "content": "no cache"}]}) is None
