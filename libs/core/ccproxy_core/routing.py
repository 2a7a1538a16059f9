"""Choosing an upstream account per request: the forwarder asks an :class:`AccountRouter` (auth's
pool, or :class:`RoutingAuthClient` over HTTP) for a credential, and reports each telling answer
(429, 529, 401, rate-limit headers) to learn whether to retry the same account or switch once."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, Field

from ccproxy_core.internal import AuthClient
from ccproxy_core.logging import register_secret
from ccproxy_core.tokens import Credential

PICK_PATH = "/internal/pick"
REPORT_PATH = "/internal/report"

HINT_SESSION = "session"
HINT_ACCOUNTS = "accounts"
HINT_KEY = "key"
#: Seconds a forwarder trusts "auth has one account" before asking again.
SINGLE_TTL = 10.0


class PickBody(BaseModel):
    hints: dict[str, str] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list)
    rejected: str | None = None
    account: str | None = None


class ReportBody(BaseModel):
    account: str
    status: int
    headers: dict[str, str] = Field(default_factory=dict)
    hints: dict[str, str] = Field(default_factory=dict)


class Outcome(BaseModel):
    action: Literal["done", "retry_same", "switch"] = "done"
    #: Seconds to wait before ``retry_same`` (a short throttle keeps the prompt cache).
    wait: float = 0.0
    reason: str | None = None


class AccountRouter(Protocol):
    async def pick(
        self, hints: Mapping[str, str] | None = None, *, exclude: Collection[str] = (), rejected: str | None = None,
        account: str | None = None,
    ) -> Credential:
        """``account``: this one (a retry after a 401 of the ``rejected`` token). ProxyError if none can."""

    async def report(
        self, account: str, status: int, headers: Mapping[str, str], hints: Mapping[str, str] | None = None
    ) -> Outcome:
        ...


def session_key(body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """What keeps one conversation on one account (and its prompt cache): ``metadata.user_id``, else
    Claude Code's session header, else a hash of the prefix up to the first ``cache_control``."""
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    if isinstance(user_id, str) and user_id:
        return "u:" + hashlib.sha256(user_id.encode()).hexdigest()[:32]
    for name, value in headers.items():
        if name.lower() == "x-claude-code-session-id" and value:
            return "s:" + hashlib.sha256(value.encode()).hexdigest()[:32]
    prefix = cached_prefix(body)
    if prefix is None:
        return None
    return "p:" + hashlib.sha256(orjson.dumps(prefix, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def cached_prefix(body: Mapping[str, Any]) -> list[Any] | None:
    """tools, system, messages in cache order, cut after the first block with cache_control."""
    parts: list[Any] = [body.get("model")]
    for part, block in _cache_order(body):
        parts.append(part)
        if isinstance(block, dict) and "cache_control" in block:
            return parts
    return None


def _cache_order(body: Mapping[str, Any]) -> Iterator[tuple[Any, Any]]:
    """(what the prefix holds, the block that may end it)."""
    tools, system, messages = body.get("tools"), body.get("system"), body.get("messages")
    if isinstance(tools, list):
        yield from ((tool, tool) for tool in tools)
    if isinstance(system, list):
        yield from ((block, block) for block in system)
    elif system is not None:
        yield system, None
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            yield from (([message.get("role"), block], block) for block in content)
        else:
            yield [message.get("role"), content], None


class RoutingAuthClient(AuthClient):
    """The auth service's pool over HTTP; with one account the token is cached (no call per request)."""

    def __init__(self, base_url: str, internal_secret: str, *, margin_seconds: float = 60.0) -> None:
        super().__init__(base_url, internal_secret)
        self._margin = margin_seconds
        self._cached: Credential | None = None
        self.fetches = 0  # a metric: calls made to auth for a token
        #: Until when auth's "one account" holds (re-asked every SINGLE_TTL seconds).
        self._single_until = 0.0

    async def pick(
        self, hints: Mapping[str, str] | None = None, *, exclude: Collection[str] = (), rejected: str | None = None,
        account: str | None = None,
    ) -> Credential:
        cached = self._cached
        if (cached is not None and time.monotonic() < self._single_until and not exclude
                and not cached.expires_within(self._margin)
                and (rejected is None or cached.secret.get_secret_value() != rejected)):
            return cached
        body = PickBody(hints=dict(hints or {}), exclude=list(exclude), rejected=rejected, account=account)
        data = await self._post(PICK_PATH, body)
        self.fetches += 1
        self._single_until = time.monotonic() + SINGLE_TTL if data.pop("single", False) else 0.0
        credential = Credential.model_validate(data)
        register_secret(credential.secret.get_secret_value())
        self._cached = credential
        return credential

    async def report(
        self, account: str, status: int, headers: Mapping[str, str], hints: Mapping[str, str] | None = None
    ) -> Outcome:
        relevant = {k: v for k, v in headers.items() if k == "retry-after" or k.startswith("anthropic-ratelimit")}
        body = ReportBody(account=account, status=status, headers=relevant, hints=dict(hints or {}))
        return Outcome.model_validate(await self._post(REPORT_PATH, body))

