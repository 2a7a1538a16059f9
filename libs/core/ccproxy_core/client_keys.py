"""Per-member client keys, as the gateway sees them: look up, admit (reserve), settle.

Auth owns the keys (``ccproxy_auth.keys``); the gateway only asks a :class:`KeyAuthority`. A
lookup is cached for ``SECURITY__KEY_CACHE_SECONDS`` (a revoked key stops working on every
replica within that), but admission is never cached: rate limits and budgets are checked and
reserved atomically in Redis for every request, then settled from the real usage.
"""

from __future__ import annotations

import hashlib
import time
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from ccproxy_core.auth_client import AuthServiceHttp
from ccproxy_core.errors import ProxyError
from ccproxy_core.models import TokenUsage
from ccproxy_core.redis import UNAVAILABLE

Period = Literal["day", "week", "month"]
KEY_PREFIX = "ccp_"
#: The auth service's internal key endpoints live under this path (``lookup``, ``any``, ``session``,
#: ``admit``, ``settle``): the gateway's :class:`HttpKeyAuthority` calls them, auth serves them.
KEYS_PATH = "/internal/keys"


def hash_key(presented: str) -> str:
    """Keys are 256-bit random strings: a plain SHA-256 is a safe one-way index."""
    return hashlib.sha256(presented.encode()).hexdigest()


class KeyInfo(BaseModel):
    """A client key without its secret."""

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

    def usable(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class Admission(BaseModel):
    """A request let in: what was reserved for it, to settle when it is over."""

    key_id: str
    key_name: str
    reservation: str | None = None
    period_id: str | None = None
    estimated_tokens: int = 0
    estimated_micro_usd: int = 0


#: What a settlement is told was spent (the name the key store's callers know it by).
UsageReport = TokenUsage


class Settlement(BaseModel):
    cost_usd: float = 0.0
    #: Spend of the key in its current budget period after this request (or in total).
    spent_usd: float = 0.0


class AdmitBody(BaseModel):
    """``POST /internal/keys/admit``: :meth:`KeyAuthority.admit`'s arguments, the key by its id."""

    key_id: str
    model: str = ""
    body_bytes: int = 0
    max_tokens: int = 0
    reserve_micro_usd: int = 0


class SettleBody(BaseModel):
    """``POST /internal/keys/settle``: :meth:`KeyAuthority.settle`'s arguments."""

    admission: Admission
    usage: UsageReport


class KeyAuthority(Protocol):
    async def lookup(self, presented: str) -> KeyInfo | None:
        """The key behind ``presented``, or None if there is no such (usable) key."""
        ...

    async def any_keys(self, fresh: bool = False) -> bool:
        """Whether client keys are in use (then every request must carry one); ``fresh``: not
        from a cache."""
        ...

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        """The usable key behind a member page session (the SHA-256 of its cookie), or None."""
        ...

    async def admit(
        self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int, reserve_micro_usd: int = 0
    ) -> Admission:
        """Check and reserve rate limits and budget; raises ProxyError (429/402) if over.

        ``reserve_micro_usd`` (SDK mode: a whole run): reserve up to that much of a budget instead
        of the request's estimate, less if less is left but never less than the estimate; the
        admission's ``estimated_micro_usd`` says how much was reserved."""
        ...

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        ...


def looks_like_key(presented: str) -> bool:
    """Whether ``presented`` has the shape of a client key (``ccp_…``), so may be one just made."""
    return presented.startswith(KEY_PREFIX)


class CachedKeys:
    """A :class:`KeyAuthority` with lookups cached locally for a few seconds.

    Only what can stop being true soon is trusted from the cache: a key found stays found for
    ``ttl`` (so a revoked key stops within it). "No such key" is not cached for key-shaped
    strings: ``ccproxy keys create`` on any host must make a key usable at once on every
    gateway, and a miss costs one lookup, as an unknown key always did."""

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
            # The authority is away (auth down, Redis restarting): a fresh question falls back to
            # the last answer, as a cached one would have been; with none, the outage shows.
            if not fresh or self._any is None or (isinstance(exc, ProxyError) and exc.status < 500):
                raise
            return self._any[1]
        self._any = (now, value)
        return value

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        # Not cached: a signed-out session must stop at once, and only the member page uses it.
        return await self.inner.member_session(sid_digest)

    async def admit(
        self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int, reserve_micro_usd: int = 0
    ) -> Admission:
        return await self.inner.admit(key, model, body_bytes, max_tokens, reserve_micro_usd)

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        return await self.inner.settle(admission, usage)


class HttpKeyAuthority(AuthServiceHttp):
    """The auth service's client keys, over HTTP (the gateway in the stack)."""

    def __init__(self, base_url: str, internal_secret: str, timeout: float = 10.0) -> None:
        super().__init__(base_url, internal_secret, timeout)

    async def lookup(self, presented: str) -> KeyInfo | None:
        data = await self._post(f"{KEYS_PATH}/lookup", {"hash": hash_key(presented)})
        return KeyInfo.model_validate(data["key"]) if data.get("key") else None

    async def any_keys(self, fresh: bool = False) -> bool:
        return bool((await self._post(f"{KEYS_PATH}/any", {}))["any"])

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        data = await self._post(f"{KEYS_PATH}/session", {"digest": sid_digest})
        return KeyInfo.model_validate(data["key"]) if data.get("key") else None

    async def admit(
        self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int, reserve_micro_usd: int = 0
    ) -> Admission:
        data = await self._post(
            f"{KEYS_PATH}/admit",
            AdmitBody(key_id=key.id, model=model, body_bytes=body_bytes, max_tokens=max_tokens,
                      reserve_micro_usd=reserve_micro_usd),
        )
        return Admission.model_validate(data)

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        data = await self._post(f"{KEYS_PATH}/settle", SettleBody(admission=admission, usage=usage))
        return Settlement.model_validate(data)
