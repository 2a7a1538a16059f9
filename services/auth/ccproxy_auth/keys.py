"""Client keys: one per team member, stored hashed (shown once), with rate limits and a budget. Admission is
one Lua script, atomic (fifty concurrent requests cannot all slip under a limit of five): rpm/tpm buckets, and the
estimated cost (input bytes / 4 plus max_tokens) reserved against the period's budget; settlement books the real
cost. Reservations expire, so a dead gateway holds no budget."""

from __future__ import annotations

import calendar
import math
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ccproxy_core.client_keys import KEY_PREFIX, Admission, KeyInfo, Period, Settlement, UsageReport, hash_key
from ccproxy_core.errors import ProxyError
from ccproxy_core.pricing import current
from ccproxy_core.redis import as_text

MICRO = 1_000_000
#: A request's reservation expires after this long (longer than any stream).
RESERVATION_TTL = 3600
#: Every amount (micro-USD or tokens) reaching Redis is clamped to [0, MAX_AMOUNT]: far below 2**53
#: (exact in Lua's doubles), so a reservation can neither go negative nor overflow.
MAX_AMOUNT = 10**15
#: The largest token counts taken from a request or a usage report (bigger ones are clamped).
MAX_TOKENS = 10**12
#: Seconds a period's spend counter outlives its last settlement (longer than any period).
SPEND_TTL = 40 * 24 * 3600

#: Lua shared by both scripts: ``int`` because Lua would print 1e15 as "1e+15"; ``release`` and
#: ``heal`` leave no counter below zero; ``refill``: a bucket of ``cap`` refilled ``cap`` a minute.
_PRELUDE = """
local function clamp(value) return math.max(0, math.min(tonumber(value) or 0, @MAX@)) end
local function int(value) return string.format('%d', clamp(value)) end
local function count(counter) return tonumber(redis.call('GET', counter) or '0') or 0 end
local function heal(counter) if count(counter) < 0 then redis.call('SET', counter, 0) end end
local function release(counter, amount)
  if clamp(amount) <= 0 then return end
  if redis.call('DECRBY', counter, int(amount)) < 0 then redis.call('SET', counter, 0) end
end
-- give back reservation ``rid`` (recorded as "micro:tokens"); returns the tokens it estimated
local function unreserve(amounts, expiries, held, rid)
  local amt = redis.call('HGET', amounts, rid)
  redis.call('ZREM', expiries, rid)
  if not amt then return 0 end
  redis.call('HDEL', amounts, rid)
  local micro, tokens = string.match(amt, '^(-?%d+):?(-?%d*)')
  release(held, tonumber(micro) or 0)
  return clamp(tokens)
end
local function refill(bucket, cap, now)
  local b = redis.call('HMGET', bucket, 'level', 'ts')
  local level = tonumber(b[1]) or cap
  return math.min(cap, level + math.max(0, now - (tonumber(b[2]) or now)) * cap / 60.0)
end
""".replace("@MAX@", str(MAX_AMOUNT))

ADMIT = _PRELUDE + """
local rec = redis.call('HMGET', KEYS[1], 'id', 'revoked_at', 'expires_at', 'rpm', 'tpm', 'budget_micro')
if not rec[1] then return {'missing'} end
if rec[2] and rec[2] ~= '' then return {'revoked'} end
local now = tonumber(ARGV[1])
if rec[3] and rec[3] ~= '' and tonumber(rec[3]) <= now then return {'expired'} end
local est_micro = clamp(ARGV[2])
local est_tokens = clamp(ARGV[3])
-- release reservations whose request never settled (a gateway died)
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)) do unreserve(KEYS[7], KEYS[6], KEYS[5], rid) end
local rpm = tonumber(rec[4]) or 0
local rpm_level = nil
if rpm > 0 then
  local level = refill(KEYS[2], rpm, now)
  if level < 1 then return {'rpm', tostring((1 - level) * 60.0 / rpm)} end
  rpm_level = level - 1
end
local tpm = tonumber(rec[5]) or 0
local tpm_level = nil
if tpm > 0 then
  local level = refill(KEYS[3], tpm, now)
  if level <= 0 then return {'tpm', tostring((1 - level) * 60.0 / tpm)} end
  tpm_level = level - est_tokens
end
local budget = tonumber(rec[6]) or 0
if budget > 0 then
  local spent = math.max(0, count(KEYS[4]))
  local held = math.max(0, count(KEYS[5]))
  if spent + held + est_micro > budget then return {'budget', int(spent), int(held)} end
end
if rpm_level then redis.call('HSET', KEYS[2], 'level', tostring(rpm_level), 'ts', ARGV[1]) end
if tpm_level then redis.call('HSET', KEYS[3], 'level', tostring(tpm_level), 'ts', ARGV[1]) end
local want = int(est_micro)
heal(KEYS[5])
redis.call('INCRBY', KEYS[5], want)
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[5]), ARGV[4])
redis.call('HSET', KEYS[7], ARGV[4], want .. ':' .. int(est_tokens))
return {'ok', want}
"""

SETTLE = _PRELUDE + """
local est_tokens = unreserve(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
local actual = int(ARGV[2])
heal(KEYS[4])
local spent = redis.call('INCRBY', KEYS[4], actual)
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[6]))
local tpm = tonumber(ARGV[5])
if tpm > 0 then
  local level = refill(KEYS[5], tpm, tonumber(ARGV[4])) - (clamp(ARGV[3]) - est_tokens)
  redis.call('HSET', KEYS[5], 'level', tostring(level), 'ts', ARGV[4])
end
redis.call('HINCRBY', KEYS[6], 'spend_micro', actual)
redis.call('HINCRBY', KEYS[6], 'requests', 1)
for i, field in ipairs({'input_tokens', 'output_tokens', 'cache_read_tokens', 'cache_write_tokens'}) do
  redis.call('HINCRBY', KEYS[6], field, int(ARGV[6 + i]))
end
return spent
"""


class KeyUsage(KeyInfo):
    """A key with its spend (``keys list``, the admin API, ``/me``): in total, and this period's for a budget."""

    spent_usd: float = 0.0
    period_spent_usd: float | None = None
    period_ends_at: float | None = None
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class KeyAdminError(ValueError):
    """A key operation cannot be done (bad limits, duplicate name); ``status`` for the admin API."""

    status = 400


class UnknownKey(KeyAdminError):
    status = 404


#: The largest limits a key may be given: far above any real use, far below what Redis and the
#: Lua scripts' doubles hold exactly (a budget is kept in micro-USD).
MAX_RPM = 1_000_000
MAX_TPM = 10**10
MAX_BUDGET_USD = 1_000_000.0


def period_bounds(period: Period, now: float) -> tuple[str, datetime, datetime]:
    """(id, start, end) of the UTC calendar period around ``now``."""
    at = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y%m%d"), start, start + timedelta(days=1)
    if period == "week":
        start = (at - timedelta(days=at.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        iso = start.isocalendar()
        return f"w{iso.year}W{iso.week:02d}", start, start + timedelta(days=7)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(start.year, start.month)[1]
    return start.strftime("m%Y%m"), start, start + timedelta(days=days)


def _bounded(value: int | float, top: int = MAX_TOKENS) -> int:
    """``value`` as an integer in [0, top] (nothing a request says may reach Redis unbounded)."""
    if not isinstance(value, int | float) or value != value:  # NaN
        return 0
    return int(max(0, min(value, top)))


def estimate(model: str, body_bytes: int, max_tokens: int) -> tuple[int, int]:
    """(tokens, micro-USD) a request may use at most, for reservations. A model without a price reserves at the
    dearest one (a made-up name cannot slip past a budget), a long prompt at its tier's; inputs are clamped."""
    input_tokens = max(1, _bounded(body_bytes) // 4)
    output_tokens = _bounded(max_tokens)
    tokens = input_tokens + output_tokens
    usd = current().rates(model).cost(input_tokens, output_tokens)
    return tokens, _bounded(math.ceil(usd * MICRO), MAX_AMOUNT)


def usage_cost_micro(usage: UsageReport) -> int:
    usd = current().usd(
        usage.model, _bounded(usage.input_tokens), _bounded(usage.output_tokens),
        _bounded(usage.cache_read_tokens), _bounded(usage.cache_write_tokens), _bounded(usage.cache_write_1h_tokens),
    )
    return _bounded(math.ceil(usd * MICRO), MAX_AMOUNT)


#: The per-key token totals settlement adds up (and ``SETTLE`` writes, in this order).
TOKEN_TOTALS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
#: What :meth:`KeyStore.update` may change.
LIMITS = frozenset({"rpm", "tpm", "budget_usd", "period", "expires_at", "accounts"})


def _spend(period_id: str | None) -> str:
    """A key's spend counter of one budget period (``none``: a key without a period)."""
    return f"spend:{period_id or 'none'}"


def _limits_record(info: KeyInfo) -> dict[str, str]:
    """A key's limits as its Redis record holds them (0 or "": none)."""
    return {
        "expires_at": repr(info.expires_at) if info.expires_at else "",
        "rpm": str(info.rpm or 0),
        "tpm": str(info.tpm or 0),
        "budget_micro": str(math.floor(info.budget_usd * MICRO) if info.budget_usd else 0),
        "period": info.period or "",
        "accounts": ",".join(info.accounts),
    }


def _with_limits(info: KeyInfo, changes: dict[str, Any]) -> KeyInfo:
    """``info`` with :data:`LIMITS` changed, checked; a budget without a period is monthly."""
    if unknown := set(changes) - LIMITS:
        raise KeyAdminError(f"cannot change {', '.join(sorted(unknown))}")
    for flag, top in (("rpm", MAX_RPM), ("tpm", MAX_TPM)):
        value = changes.get(flag)
        if value is not None and (type(value) is not int or not 1 <= value <= top):
            raise KeyAdminError(f"--{flag} must be a whole number from 1 to {top}")
    budget_usd, expires_at = changes.get("budget_usd"), changes.get("expires_at")
    if budget_usd is not None and not (isinstance(budget_usd, int | float) and math.isfinite(budget_usd)
                                       and budget_usd <= MAX_BUDGET_USD and math.floor(budget_usd * MICRO) >= 1):
        raise KeyAdminError(f"--budget-usd must be an amount from $0.000001 to ${MAX_BUDGET_USD:,.0f}")
    if expires_at is not None and not (isinstance(expires_at, int | float) and math.isfinite(expires_at)
                                       and 0 < expires_at < 253402300800):  # before the year 10000
        raise KeyAdminError("--expires must be a date before the year 10000")
    if "accounts" in changes:
        changes["accounts"] = [a.strip() for a in changes["accounts"] or [] if a.strip()]
    merged = info.model_copy(update=changes)
    if merged.budget_usd is not None and merged.period is None:
        merged.period = "month"
    return merged


def session_key(prefix: str, sid_digest: str) -> str:
    """Where a console session lives in Redis: the key store reads member sessions (``/me``) there."""
    return f"{prefix}console:session:{sid_digest}"


def need_keys(keys: KeyStore | None, hint: str = "") -> KeyStore:
    if keys is None:
        raise ProxyError(503, f"client keys need a real Redis (REDIS__URL){hint}")
    return keys


class KeyStore:
    """Client keys in Redis (durable with its append-only file): a :class:`KeyAuthority`."""

    def __init__(self, redis: Any, prefix: str = "ccproxy:") -> None:
        self.redis = redis
        self.prefix = prefix
        self.p = f"{prefix}keys:"
        self._admit = redis.register_script(ADMIT)
        self._settle = redis.register_script(SETTLE)

    def _key(self, key_id: str, what: str = "") -> str:
        return f"{self.p}id:{key_id}:{what}" if what else f"{self.p}id:{key_id}"

    async def create(self, name: str, **limits: Any) -> tuple[KeyInfo, str]:
        """A new key with :data:`LIMITS` (None: none); the plain key is returned here and never again."""
        name = name.strip()
        if not name:
            raise KeyAdminError("a key needs a name")
        key_id = "k_" + secrets.token_hex(6)
        plain = KEY_PREFIX + secrets.token_urlsafe(32)
        blank = KeyInfo(id=key_id, name=name, hint=plain[-4:], created_at=time.time())
        info = _with_limits(blank, {k: v for k, v in limits.items() if v is not None})
        name_key = f"{self.p}name:{name}"
        record = {"id": key_id, "name": name, "hash": hash_key(plain), "hint": info.hint,
                  "created_at": repr(info.created_at), "revoked_at": "", **_limits_record(info)}
        # Everything is checked and built before the name is taken, and a write that fails after
        # it gives the name back: a failed create leaves nothing behind.
        if not await self.redis.set(name_key, key_id, nx=True):
            raise KeyAdminError(f"a key named {name!r} exists already (revoke it first, or pick another name)")
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self._key(key_id), mapping=record)
            pipe.set(f"{self.p}hash:{record['hash']}", key_id)
            pipe.sadd(f"{self.p}all", key_id)
            await pipe.execute()
        except BaseException:
            await self.redis.delete(name_key)
            raise
        return info, plain

    async def _need(self, id_or_name: str) -> KeyInfo:
        """The key by its id (``k_…``) or its name; UnknownKey if there is none."""
        key_id: Any = id_or_name
        if not id_or_name.startswith("k_"):
            key_id = await self.redis.get(f"{self.p}name:{id_or_name}")
        info = await self.get(as_text(key_id)) if key_id is not None else None
        if info is None:
            raise UnknownKey(f"no key {id_or_name!r}")
        return info

    async def get(self, key_id: str) -> KeyInfo | None:
        raw = await self.redis.hgetall(self._key(key_id))
        r = {as_text(k): as_text(v) for k, v in raw.items()}
        if not r:
            return None
        # The record holds "" for "none" and 0 for "no limit": left out, the model's defaults apply.
        fields = {k: v for k, v in r.items() if v != "" and (v != "0" or k not in ("rpm", "tpm"))}
        budget_micro = int(r.get("budget_micro") or 0)
        accounts = [a for a in r.get("accounts", "").split(",") if a]
        return KeyInfo.model_validate({**fields, "budget_usd": budget_micro / MICRO or None, "accounts": accounts})

    async def revoke(self, id_or_name: str) -> KeyInfo:
        info = await self._need(id_or_name)
        if info.revoked_at is None:
            now = time.time()
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self._key(info.id), "revoked_at", repr(now))
            # The name is free again; the record stays, for its spend history.
            pipe.delete(f"{self.p}name:{info.name}")
            await pipe.execute()
            info = info.model_copy(update={"revoked_at": now})
        return info

    async def update(self, id_or_name: str, changes: dict[str, Any]) -> KeyInfo:
        """Change a key's :data:`LIMITS`; a field given as None is removed. Its spend so far is kept."""
        merged = _with_limits(await self._need(id_or_name), changes)
        await self.redis.hset(self._key(merged.id), mapping=_limits_record(merged))
        return merged

    async def listing(self, include_revoked: bool = False) -> list[KeyUsage]:
        rows: list[KeyUsage] = []
        for key_id in sorted(as_text(i) for i in await self.redis.smembers(f"{self.p}all")):
            info = await self.get(key_id)
            if info is not None and (info.revoked_at is None or include_revoked):
                rows.append(await self.usage(info))
        return rows

    async def usage(self, info: KeyInfo) -> KeyUsage:
        raw_totals = await self.redis.hgetall(self._key(info.id, "total"))
        totals = {as_text(k): int(as_text(v)) for k, v in raw_totals.items()}
        spent = totals.get("spend_micro", 0) / MICRO
        usage = KeyUsage.model_validate({**info.model_dump(), **totals, "spent_usd": spent})
        if info.period:
            pid, _, end = period_bounds(info.period, time.time())
            raw = await self.redis.get(self._key(info.id, f"spend:{pid}"))
            usage.period_spent_usd = int(as_text(raw)) / MICRO if raw else 0.0
            usage.period_ends_at = end.timestamp()
        return usage

    async def member_session(self, sid_digest: str) -> KeyInfo | None:
        """The (usable) key behind a ``/me`` session (its id's SHA-256), for GET reads elsewhere."""
        key_id, role = await self.redis.hmget(session_key(self.prefix, sid_digest), "key_id", "role")
        return await self._usable(key_id) if role is not None and as_text(role) == "member" else None

    async def lookup(self, presented: str) -> KeyInfo | None:
        return await self.lookup_hash(hash_key(presented))

    async def lookup_hash(self, digest: str) -> KeyInfo | None:
        return await self._usable(await self.redis.get(f"{self.p}hash:{digest}"))

    async def _usable(self, key_id: Any) -> KeyInfo | None:
        info = await self.get(as_text(key_id)) if key_id is not None else None
        return info if info is not None and info.usable() else None

    async def any_keys(self, fresh: bool = False) -> bool:
        return bool(await self.redis.scard(f"{self.p}all"))

    async def admit(self, key: KeyInfo, model: str, body_bytes: int, max_tokens: int) -> Admission:
        now = time.time()
        tokens, micro = estimate(model, body_bytes, max_tokens)
        period_id = period_bounds(key.period, now)[0] if key.period else None
        rid = secrets.token_hex(8)
        result = await self._admit(
            keys=[self._key(key.id, w) for w in ("", "rpm", "tpm", _spend(period_id), "reserved", "resv", "resamt")],
            args=[repr(now), micro, tokens, rid, RESERVATION_TTL],  # the script clamps amounts
        )
        verdict = [as_text(v) for v in result]
        if verdict[0] != "ok":
            raise self._refusal(key, verdict, micro, now)
        return Admission(key_id=key.id, key_name=key.name, reservation=rid, period_id=period_id,
                         estimated_tokens=tokens, estimated_micro_usd=int(verdict[1]))

    def _refusal(self, key: KeyInfo, verdict: list[str], micro: int, now: float) -> ProxyError:
        what = verdict[0]
        if what in ("missing", "revoked", "expired"):
            return ProxyError(401, f"client key {key.name!r} is {'unknown' if what == 'missing' else what}")
        if what in ("rpm", "tpm"):
            wait = max(1, math.ceil(float(verdict[1])))
            limit = key.rpm if what == "rpm" else key.tpm
            unit = "requests" if what == "rpm" else "tokens"
            return ProxyError(429, f"client key {key.name!r} is over its rate limit of {limit} {unit} per minute; "
                              f"retry in {wait} s", "rate_limit_error", headers={"retry-after": str(wait)})
        assert key.period is not None and key.budget_usd is not None
        _, _, end = period_bounds(key.period, now)
        spent, held = int(verdict[1]) / MICRO, int(verdict[2]) / MICRO
        return ProxyError(402, f"client key {key.name!r} has spent its budget of ${key.budget_usd:.2f} per "
                          f"{key.period} (${spent:.4f} spent, ${held:.4f} held by requests in flight, this one "
                          f"needs up to ${micro / MICRO:.4f}); it resets at {end:%Y-%m-%d %H:%M} UTC", "billing_error")

    async def settle(self, admission: Admission, usage: UsageReport) -> Settlement:
        key = await self.get(admission.key_id)
        micro = usage_cost_micro(usage)
        counts = [_bounded(getattr(usage, name)) for name in TOKEN_TOTALS]
        subs = ("resamt", "resv", "reserved", _spend(admission.period_id), "tpm", "total")
        spent = await self._settle(
            keys=[self._key(admission.key_id, w) for w in subs],
            args=[admission.reservation or "-", micro, sum(counts), repr(time.time()), (key.tpm if key else 0) or 0,
                  SPEND_TTL, *counts],
        )
        return Settlement(cost_usd=micro / MICRO, spent_usd=int(spent) / MICRO)
