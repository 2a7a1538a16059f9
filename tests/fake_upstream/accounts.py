"""Per-account behaviour, for the account pool's tests: ``[[fake:acct=RULE;RULE...]]``.

A rule is ``FP/SPEC``: it applies when the caller's credential fingerprint (``fingerprint()``
without ``fp:``) starts with ``FP``, so one request can make account A answer 429 while account
B answers normally. SPEC:

- ``429`` a throttle without ``retry-after``; ``429@N`` with ``retry-after: N``
- ``quota5h@N`` / ``quota7d@N`` a spent 5-hour / 7-day quota that resets in N seconds
  (``anthropic-ratelimit-unified-*`` say ``rejected``, as subscription answers do)
- ``529`` overloaded (``529@N`` with ``retry-after``); ``401`` the token is refused
- a suffix ``xK`` (``429@1x1``) applies the rule to the first K such requests of that caller
  only (counted from the fake's request records), so a retry can then succeed.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request

from tests.fake_upstream.errors import FakeApiError
from tests.fake_upstream.scenarios import Scenario
from tests.fake_upstream.state import fingerprint

WINDOWS = {"quota5h": ("five_hour", "5h"), "quota7d": ("seven_day", "7d")}


def unified_headers(caller: Any, spent: tuple[str, str, int] | None = None) -> dict[str, str]:
    """Subscription rate-limit headers; ``spent``: (claim, window, seconds to reset)."""
    if getattr(caller, "kind", None) != "oauth":
        return {}
    now = int(time.time())
    windows = {"5h": ["allowed", "0.42", now + 3 * 3600], "7d": ["allowed", "0.21", now + 4 * 86400]}
    claim = "five_hour"
    if spent is not None:
        claim, key, seconds = spent
        windows[key] = ["rejected", "1.0", now + seconds]
    headers = {
        "anthropic-ratelimit-unified-status": "rejected" if spent else "allowed",
        "anthropic-ratelimit-unified-representative-claim": claim,
        "anthropic-ratelimit-unified-reset": str(windows["5h" if claim == "five_hour" else "7d"][2]),
    }
    for key, (status, utilization, reset) in windows.items():
        headers[f"anthropic-ratelimit-unified-{key}-status"] = str(status)
        headers[f"anthropic-ratelimit-unified-{key}-utilization"] = str(utilization)
        headers[f"anthropic-ratelimit-unified-{key}-reset"] = str(reset)
    return headers


def _times_seen(request: Request, fp: str, rule: str, status: int) -> int:
    records = request.app.state.fake.records
    seen = 0
    for record in records:
        auth = record.auth or {}
        if auth.get("fingerprint") == fp and record.status == status and rule in str(record.body):
            seen += 1
    return seen


def per_account(request: Request, scenario: Scenario, caller: Any) -> None:
    rules = scenario.extra.get("acct")
    if not rules:
        return
    fp = fingerprint(caller.secret)
    for rule in rules.split(";"):
        prefix, _, spec = rule.strip().partition("/")
        if not prefix or (prefix != "*" and not fp.removeprefix("fp:").startswith(prefix)):
            continue
        spec, _, times = spec.partition("x")
        kind, _, arg = spec.partition("@")
        status = 529 if kind == "529" else 401 if kind == "401" else 429
        if times and _times_seen(request, fp, rule, status) >= int(times):
            return
        raise _error(kind, arg, caller)


def _error(kind: str, arg: str, caller: Any) -> FakeApiError:
    if kind == "401":
        return FakeApiError(401, "Invalid bearer token")
    if kind == "529":
        return FakeApiError(529, headers={"retry-after": arg} if arg else {})
    if kind in WINDOWS:
        claim, key = WINDOWS[kind]
        seconds = int(arg or 3600)
        headers = unified_headers(caller, (claim, key, seconds)) | {"retry-after": str(seconds)}
        return FakeApiError(429, headers=headers)
    headers = unified_headers(caller)
    if arg:
        headers["retry-after"] = arg
    return FakeApiError(429, headers=headers)

