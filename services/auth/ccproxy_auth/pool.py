"""The account pool: which upstream account serves a request, and what a 429 or 401 does to it.

A conversation sticks to its account (its cache). A spent quota cools it down until the window resets, a throttle
up to AUTH__THROTTLE_WAIT_SECONDS retries on it, a longer one or a 529 cools it, a 401 after a refresh: unhealthy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from prometheus_client import Counter, Gauge
from pydantic import BaseModel

from ccproxy_auth.accounts import Account, AccountError, AccountKind, AccountStore
from ccproxy_auth.manager import CredentialManager
from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import UNIFIED, header_number
from ccproxy_core.metrics import Metrics
from ccproxy_core.redis import as_text
from ccproxy_core.routing import HINT_ACCOUNTS, HINT_SESSION, Outcome
from ccproxy_core.settings import Settings
from ccproxy_core.tokens import DEFAULT_ACCOUNT, Credential, CredentialStatus

log = logging.getLogger(__name__)
M = TypeVar("M", Counter, Gauge)

#: Seconds an account's state read from Redis is trusted before it is read again.
STATE_TTL = 1.0


@dataclass(slots=True)
class Member:
    account: Account
    source: CredentialManager


class Cooldown(BaseModel):
    until: float
    reason: str


class State(NamedTuple):
    cooldown: Cooldown | None
    problem: str | None
    limited_at: float | None


class QuotaWindow(BaseModel):
    status: str | None = None
    utilization: float | None = None
    reset: float | None = None


class Quota(BaseModel):
    """The last quota headers an account's answers carried (kept in Redis, for ``auth status``)."""

    status: str | None = None
    windows: dict[str, QuotaWindow] = {}
    updated_at: float | None = None


class AccountState(BaseModel):
    """One account as ``auth status`` and ``/internal/accounts`` show it (no secret)."""

    name: str
    kind: str
    source: str | None = None
    subscription_type: str | None = None
    expires_at: float | None = None
    available: bool = False
    healthy: bool = True
    problem: str | None = None
    cooldown: Cooldown | None = None
    last_limited_at: float | None = None
    quota: dict[str, QuotaWindow] = {}
    quota_status: str | None = None
    quota_updated_at: float | None = None
    #: When ccproxy last refreshed its token (None: not since this Redis knew it, or an API key).
    refreshed_at: float | None = None


def quota_windows(headers: Mapping[str, str]) -> dict[str, QuotaWindow]:
    """``anthropic-ratelimit-unified-<window>-{status,utilization,reset}`` by window."""
    windows: dict[str, QuotaWindow] = {}
    for name, value in headers.items():
        window, _, field = name.removeprefix(UNIFIED).rpartition("-")
        if not name.startswith(UNIFIED) or not window or window == "overage":
            continue
        if field in ("status", "utilization", "reset"):
            entry = windows.setdefault(window, QuotaWindow())
            setattr(entry, field, value if field == "status" else header_number(value))
    return windows


class Verdict(BaseModel):
    """How a 429/529 is read: cool down until ``until`` (switch), or wait ``wait`` (same account)."""

    reason: str
    until: float | None = None
    wait: float | None = None


def read_limit(status: int, headers: Mapping[str, str], settings: Settings, now: float) -> Verdict:
    """Tell a spent quota from a throttle from an overload, from the answer's headers."""
    auth = settings.auth
    retry_after = header_number(headers.get("retry-after"))
    if status == 529:
        return Verdict(reason="overloaded", until=now + (retry_after or auth.overload_cooldown_seconds))
    windows = quota_windows(headers)
    spent = [
        (name, w) for name, w in windows.items()
        if w.status == "rejected" or (w.utilization is not None and w.utilization >= 1.0)
    ]
    if headers.get(UNIFIED + "status") == "rejected" or spent:
        resets = [w.reset for _, w in spent if w.reset]
        reset = max(resets) if resets else header_number(headers.get(UNIFIED + "reset"))
        if reset is None or reset <= now:
            reset = now + (retry_after or auth.default_cooldown_seconds)
        label = headers.get(UNIFIED + "representative-claim") or (spent[0][0] if spent else "unified")
        return Verdict(reason=f"quota:{label}", until=reset)
    if retry_after is not None and retry_after <= auth.throttle_wait_seconds:
        return Verdict(reason="throttle", wait=retry_after)
    if retry_after is not None:
        return Verdict(reason="throttle", until=now + retry_after)
    return Verdict(reason="rate_limited", until=now + auth.default_cooldown_seconds)


class PoolMetrics:
    """The pool's metrics, in the registry of the service that serves ``/metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self.service = metrics.service
        self.cooldowns = metrics.cooldowns
        self.refreshes = metrics.refreshes

        def add(kind: type[M], name: str, doc: str, *labels: str) -> M:
            return kind(name, doc, ["service", "account", *labels], registry=metrics.registry)

        self.unhealthy = add(Counter, "ccproxy_account_unhealthy_total",
                             "Accounts marked unhealthy (a 401 that survived a refresh)")
        self.healthy = add(Gauge, "ccproxy_account_healthy", "1 if the account is healthy, 0 if it needs a new login")
        self.cooling = add(Gauge, "ccproxy_account_cooldown_seconds",
                           "Seconds left in the account's cooldown (0: none)")
        self.utilization = add(Gauge, "ccproxy_account_quota_utilization",
                               "Last seen subscription quota use, 0..1, by window", "window")


class AccountPool:
    """A :class:`~ccproxy_core.routing.AccountRouter`, and its :meth:`status` says what it has."""

    def __init__(self, settings: Settings, redis: Any, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.store = AccountStore(settings)
        self.prefix = f"{settings.redis.key_prefix}pool:"
        self.metrics = PoolMetrics(metrics or Metrics("auth"))
        self._members: list[Member] = []
        self._version: tuple[Any, ...] | None = None
        self._checked = 0.0
        self._sources: dict[str, CredentialManager] = {}
        self._unhealthy_seen: set[str] = set()
        self._quota_seen: dict[str, tuple[Any, ...]] = {}
        #: States read from Redis, trusted for STATE_TTL (what this process sets is seen at once).
        self._state_cache: dict[str, tuple[float, State]] = {}

    def attach_metrics(self, metrics: Metrics) -> None:
        """Count into another service's metrics, e.g. the gateway's in one process."""
        self.metrics = PoolMetrics(metrics)

    def members(self) -> list[Member]:
        """The accounts, re-read when their files change (checked at most once a second)."""
        now = time.monotonic()
        if self._version is None or now - self._checked >= 1.0:
            self._checked = now
            version = self.store.version()
            if version != self._version:
                self._version, self._members = version, self._build()
        return self._members

    def _build(self) -> list[Member]:
        members: list[Member] = []
        for account in self.store.list():
            if account.disabled:
                continue
            try:
                members.append(Member(account, self._source(account)))
            except (AccountError, OSError) as exc:
                log.warning("account %s is not usable: %s", account.name, exc)
        if not members:
            # No accounts configured: the Claude CLI's login or AUTH__API_KEY, as always.
            kind: AccountKind = "api_key" if self.settings.auth.api_key else "claude_cli"
            members.append(Member(Account(name=DEFAULT_ACCOUNT, kind=kind, created_at=0), self._source(None)))
        return members

    def _source(self, account: Account | None) -> CredentialManager:
        """The manager of ``account`` (None: the CLI login), kept across reloads (its lock and cache
        must survive) while its API key and credential store stay the same."""
        if account is None:
            manager = CredentialManager(self.settings, self.redis)
        elif account.kind == "api_key":
            api_key = (self.store.secret(account.name) or {}).get("api_key")
            if not api_key:
                raise AccountError("no API key stored")
            manager = CredentialManager(self.settings, self.redis, account.name, [], api_key)
        else:
            manager = CredentialManager(self.settings, self.redis, account.name, [self.store.credential_store(account)])
        existing = self._sources.get(manager.account)
        if existing is not None and existing.origin == manager.origin:
            return existing
        manager.on_refresh = lambda outcome: self.metrics.refreshes.labels(self.metrics.service, outcome).inc()
        self._sources[manager.account] = manager
        return manager

    def member(self, name: str) -> Member:
        for m in self.members():
            if m.account.name == name:
                return m
        raise ProxyError(503, f"upstream account {name!r} is not configured", "api_error")

    def _k(self, account: str, what: str) -> str:
        return f"{self.prefix}acct:{account}:{what}"

    async def _states(self, names: list[str]) -> dict[str, State]:
        now_m = time.monotonic()
        cache = self._state_cache
        stale = [n for n in names if n not in cache or now_m - cache[n][0] >= STATE_TTL]
        fields = ("cooldown", "unhealthy", "limited_at")
        raw = await self.redis.mget([self._k(n, what) for n in stale for what in fields]) if stale else []
        now = time.time()
        for i, name in enumerate(stale):
            cd_raw, bad_raw, limited_raw = raw[3 * i: 3 * i + 3]
            cooldown = Cooldown.model_validate_json(cd_raw) if cd_raw else None
            problem = as_text(bad_raw) if bad_raw is not None else None
            self._state_cache[name] = (now_m, State(cooldown, problem, float(limited_raw) if limited_raw else None))
            if problem:
                self._unhealthy_seen.add(name)
            else:
                self._unhealthy_seen.discard(name)
            self.metrics.healthy.labels(self.metrics.service, name).set(0 if problem else 1)
            left = max(0.0, cooldown.until - now) if cooldown else 0
            self.metrics.cooling.labels(self.metrics.service, name).set(left)
        out: dict[str, State] = {}
        for name in names:
            cooldown, problem, limited = self._state_cache[name][1]
            out[name] = State(cooldown if cooldown is not None and cooldown.until > now else None, problem, limited)
        return out

    async def pick(self, hints: Mapping[str, str] | None = None, *, exclude: Collection[str] = (),
                   rejected: str | None = None, account: str | None = None) -> Credential:
        if account is not None:
            return await self.member(account).source.get(rejected=rejected)
        hints = hints or {}
        members = self.members()
        allowed = {a.strip() for a in hints.get(HINT_ACCOUNTS, "").split(",") if a.strip()}
        if allowed:
            members = [m for m in members if m.account.name in allowed]
            if not members:
                raise ProxyError(403, "this client key may only use upstream accounts that do not exist: "
                                 + ", ".join(sorted(allowed)), "permission_error")
        candidates = [m for m in members if m.account.name not in exclude]
        while candidates:
            chosen = await self._choose(candidates, hints.get(HINT_SESSION))
            try:
                return await chosen.source.get()
            except ProxyError as exc:
                if exc.status != 401:
                    raise
                # This account cannot even produce a token (dead refresh token): unhealthy (once;
                # its manager backs off from refreshing), and the next one, if any, serves.
                if chosen.account.name not in self._unhealthy_seen:
                    await self.mark_unhealthy(chosen.account.name, exc.message)
                if len(candidates) == 1:
                    raise
                candidates.remove(chosen)
        raise ProxyError(503, "no upstream account can take this request (all were tried)")

    async def _choose(self, candidates: list[Member], session: str | None) -> Member:
        if len(candidates) == 1:
            return candidates[0]  # nothing to choose, nothing to stick to: the upstream decides
        names = [m.account.name for m in candidates]
        sticky_key = f"{self.prefix}sticky:{session}" if session else None
        states = await self._states(names)
        current = as_text(await self.redis.get(sticky_key) or "") if sticky_key else ""
        usable = [m for m in candidates
                  if states[m.account.name].cooldown is None and not states[m.account.name].problem]
        if not usable:
            # Every account is cooling or unhealthy. Unhealthy ones may have been fixed (a new
            # login), and a cooldown may be over early: try the likeliest one and let the
            # upstream answer, rather than refuse in its name.
            usable = [m for m in candidates if states[m.account.name].cooldown is None] or [
                min(candidates, key=lambda m: cast(Cooldown, states[m.account.name].cooldown).until)
            ]
        chosen = next((m for m in usable if m.account.name == current), None)
        if chosen is None:
            chosen = await self._by_strategy(usable, states)
        if sticky_key:
            await self.redis.set(sticky_key, chosen.account.name, ex=self.settings.auth.sticky_ttl_seconds)
        return chosen

    async def _by_strategy(self, usable: list[Member], states: Mapping[str, State]) -> Member:
        strategy = self.settings.auth.strategy
        if strategy == "fill_first" or len(usable) == 1:
            return usable[0]
        turn = int(await self.redis.incr(f"{self.prefix}rr"))
        if strategy == "least_recently_limited":
            oldest = min(states[m.account.name].limited_at or 0.0 for m in usable)
            usable = [m for m in usable if (states[m.account.name].limited_at or 0.0) == oldest]
        return usable[turn % len(usable)]

    async def report(
        self, account: str, status: int, headers: Mapping[str, str], hints: Mapping[str, str] | None = None
    ) -> Outcome:
        headers = {k.lower(): v for k, v in headers.items()}
        await self._note_quota(account, headers)
        if 200 <= status < 400:
            if account in self._unhealthy_seen:
                await self.redis.delete(self._k(account, "unhealthy"))
                self._unhealthy_seen.discard(account)
                self._state_cache.pop(account, None)
                log.info("account %s answers again: healthy", account)
            return Outcome()
        if status == 401:
            await self.mark_unhealthy(account, "the upstream refused its token even after a refresh")
            return Outcome(action="switch", reason="unauthorized")
        if status not in (429, 529):
            return Outcome()
        now = time.time()
        verdict = read_limit(status, headers, self.settings, now)
        if status == 429:
            await self.redis.set(self._k(account, "limited_at"), repr(now))
            self._state_cache.pop(account, None)
        if verdict.wait is not None:
            if len(self.members()) == 1:
                return Outcome(reason=verdict.reason)  # the client retries after retry-after itself
            return Outcome(action="retry_same", wait=verdict.wait, reason=verdict.reason)
        assert verdict.until is not None
        ms = max(1, int((verdict.until - now) * 1000))
        cooldown = Cooldown(until=verdict.until, reason=verdict.reason)
        await self.redis.set(self._k(account, "cooldown"), cooldown.model_dump_json(), px=ms)
        self._state_cache.pop(account, None)
        self.metrics.cooldowns.labels(self.metrics.service, account, verdict.reason.split(":")[0]).inc()
        self.metrics.cooling.labels(self.metrics.service, account).set(ms / 1000)
        log.warning("account %s cools down for %.0f s (%s)", account, ms / 1000, verdict.reason)
        return Outcome(action="switch", reason=verdict.reason)

    async def mark_unhealthy(self, account: str, why: str) -> None:
        await self.redis.set(self._k(account, "unhealthy"), why)
        self._unhealthy_seen.add(account)
        self._state_cache.pop(account, None)
        self.metrics.unhealthy.labels(self.metrics.service, account).inc()
        self.metrics.healthy.labels(self.metrics.service, account).set(0)
        log.error("upstream account %s is UNHEALTHY: %s; log in again (`ccproxy auth login --account %s`)",
                  account, why, account)

    async def _note_quota(self, account: str, headers: Mapping[str, str]) -> None:
        windows = quota_windows(headers)
        overall = headers.get(UNIFIED + "status")
        if not windows and overall is None:
            return
        fingerprint = (overall, *sorted((k, w.status, w.utilization, w.reset) for k, w in windows.items()))
        if self._quota_seen.get(account) == fingerprint:
            return
        self._quota_seen[account] = fingerprint
        snapshot = Quota(status=overall, windows=windows, updated_at=time.time())
        await self.redis.set(self._k(account, "quota"), snapshot.model_dump_json(exclude_none=True))
        for name, w in windows.items():
            if w.utilization is not None:
                self.metrics.utilization.labels(self.metrics.service, account, name).set(w.utilization)

    async def clear(self, account: str) -> None:
        """Forget cooldown and unhealthy marks (after a new login or a manual refresh), and re-read the
        accounts on next use (this process may just have changed them)."""
        self._version = None
        await self.redis.delete(self._k(account, "cooldown"), self._k(account, "unhealthy"))
        self._unhealthy_seen.discard(account)
        self._state_cache.pop(account, None)

    async def refresh(self, account: str) -> Credential:
        """Refresh now, even if the token is still valid (``ccproxy auth refresh``)."""
        member = self.member(account)
        current = await member.source.get()
        credential = await member.source.get(rejected=current.secret.get_secret_value())
        await self.clear(account)
        return credential

    async def accounts(self) -> list[AccountState]:
        members = self.members()
        names = [m.account.name for m in members]  # never empty: see _build
        states = await self._states(names)
        raw = await self.redis.mget([self._k(n, what) for n in names for what in ("quota", "refreshed")])
        statuses = await asyncio.gather(*(m.source.status() for m in members))
        out: list[AccountState] = []
        for member, status, quota_raw, refreshed_raw in zip(members, statuses, raw[::2], raw[1::2], strict=True):
            name = member.account.name
            cooldown, problem, limited = states[name]
            quota = Quota.model_validate_json(quota_raw) if quota_raw else Quota()
            out.append(AccountState(
                name=name, kind=member.account.kind, source=status.source, expires_at=status.expires_at,
                subscription_type=status.subscription_type or member.account.subscription_type,
                available=status.available and problem is None and cooldown is None,
                healthy=problem is None and status.available, problem=problem or status.detail,
                cooldown=cooldown, last_limited_at=limited,
                quota=quota.windows, quota_status=quota.status, quota_updated_at=quota.updated_at,
                refreshed_at=float(refreshed_raw) if refreshed_raw else None,
            ))
        return out

    async def status(self) -> CredentialStatus:
        members = self.members()
        if len(members) == 1:
            return await members[0].source.status()
        states = await self.accounts()
        usable = [s for s in states if s.available]
        return CredentialStatus(available=bool(usable), kind="pool", source=f"{len(states)} accounts",
                                account=",".join(s.name for s in usable) or None,
                                detail=f"{len(usable)} of {len(states)} accounts usable")
