"""Per-member client keys, as the gateway sees them: look up (cached a few seconds), admit (rate
limits and budget reserved in Redis on every request, never cached) and settle. Auth owns them."""

from __future__ import annotations

import hashlib
import time
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from ccproxy_core.errors import ProxyError
from ccproxy_core.internal import AuthServiceHttp
from ccproxy_core.models import TokenUsage
from ccproxy_core.redis import UNAVAILABLE

Period = Literal["day", "week", "month"]
KEY_PREFIX = "ccp_"
KEYS_PATH = "/internal/keys"


def hash_key(presented: str) -> str:
    """Keys are 256-bit random strings: a plain SHA-256 is a safe one-way index."""
    return hashlib.sha256(presented.encode()).hexdigest()


class KeyInfo(BaseModel):
    id: str
    name: str
    hint: str = ""
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    period: Period | None = None
    #: Upstream accounts this key may use; empty: any.
    accounts: list[str] = Field(default_factory=list)

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.budget_usd)

    def usable(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > time.time())


class Admission(BaseModel):
    """A request let in: what was reserved for it, to settle when it is over."""

    key_id: str
    key_name: str
    reservation: str | None = None
    period_id: str | None = None
    estimated_tokens: int = 0
    estimated_micro_usd: int = 0


UsageReport = TokenUsage


class Settlement(BaseModel):
    cost_usd: float = 0.0
    #: The key's spend in its budget period (or in total) after this request.
    spent_usd: float = 0.0


class AdmitBody(BaseModel):
    key_id: str
    model: str = ""
    body_bytes: int = 0
    max_tokens: int = 0


class SettleBody(BaseModel):
    admission: Admission
    usage: UsageReport


class KeyAuthority(Protocol):
    async def lookup(self, presented: str) -> KeyInfo | None:
        ...

    async def any_keys(self, fresh: bool = False) -> bool:
        """Whether client keys are in use (then every request must carry one)."""

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        """By the member page cookie's SHA-256."""

    async def admit(self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int) -> Admission:
        """Check and reserve rate limits and budget (429/402 if over)."""

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        ...


def looks_like_key(presented: str) -> bool:
    return presented.startswith(KEY_PREFIX)


class CachedKeys:
    """Lookups cached for ``ttl`` (a revoked key stops within it); "no such key" is not cached for
    key-shaped strings, so a key just made works at once everywhere."""

    def __init__(self, inner: KeyAuthority, ttl: float = 5.0) -> None:
        self.inner = inner
        self.ttl = ttl
        self._lookups: dict[str, tuple[float, KeyInfo | None]] = {}
        self._any: tuple[float, bool] | None = None

    async def lookup(self, presented: str) -> KeyInfo | None:
        digest = hash_key(presented)
        now = time.monotonic()
        hit = self._lookups.get(digest)
        if hit is not None and now - hit[0] < self.ttl and (hit[1] is not None or not looks_like_key(presented)):
            return hit[1]
        found = await self.inner.lookup(presented)
        if len(self._lookups) > 10_000:
            self._lookups.clear()
        self._lookups[digest] = (now, found)
        if found is not None and self._any is not None and not self._any[1]:
            self._any = None  # "no keys exist" is stale: a key was just made
        return found

    async def any_keys(self, fresh: bool = False) -> bool:
        now = time.monotonic()
        if not fresh and self._any is not None and now - self._any[0] < self.ttl:
            return self._any[1]
        try:
            value = await self.inner.any_keys()
        except (ProxyError, *UNAVAILABLE) as exc:
            # The authority is away: a fresh question falls back to the last answer, if any.
            if not fresh or self._any is None or (isinstance(exc, ProxyError) and exc.status < 500):
                raise
            return self._any[1]
        self._any = (now, value)
        return value

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        # Not cached: a signed-out session must stop at once, and only the member page uses it.
        return await self.inner.member_session(sid_digest)

    async def admit(self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int) -> Admission:
        return await self.inner.admit(key, model, body_bytes, max_tokens)

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        return await self.inner.settle(admission, usage)


class HttpKeyAuthority(AuthServiceHttp):
    async def lookup(self, presented: str) -> KeyInfo | None:
        data = await self._post(f"{KEYS_PATH}/lookup", {"hash": hash_key(presented)})
        return KeyInfo.model_validate(data["key"]) if data.get("key") else None

    async def any_keys(self, fresh: bool = False) -> bool:
        return bool((await self._post(f"{KEYS_PATH}/any", {}))["any"])

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        data = await self._post(f"{KEYS_PATH}/session", {"digest": sid_digest})
        return KeyInfo.model_validate(data["key"]) if data.get("key") else None

    async def admit(self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int) -> Admission:
        body = AdmitBody(key_id=key.id, model=model, body_bytes=body_bytes, max_tokens=max_tokens)
        return Admission.model_validate(await self._post(f"{KEYS_PATH}/admit", body))

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        data = await self._post(f"{KEYS_PATH}/settle", SettleBody(admission=admission, usage=usage))
        return Settlement.model_validate(data)
