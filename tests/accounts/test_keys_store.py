"""Client keys in real Redis: hashed at rest, atomic limits and budgets, settlement."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from ccproxy_auth.keys import MICRO, KeyStore, estimate, period_bounds
from ccproxy_core.client_keys import UsageReport
from ccproxy_core.errors import ProxyError

MODEL = "claude-sonnet-4-5-20250929"


async def test_key_is_stored_hashed_and_revocable(redis: Redis, prefix: str) -> None:
    store = KeyStore(redis, prefix)
    info, plain = await store.create("alice", rpm=10)
    assert plain.startswith("ccp_") and len(plain) > 40
    assert (await store.lookup(plain)).id == info.id  # type: ignore[union-attr]
    assert await store.lookup(plain + "x") is None
    # Nothing in Redis holds the plain key.
    for key in [k async for k in redis.scan_iter(match=f"{prefix}*")]:
        assert plain.encode() not in key
        kind = await redis.type(key)
        if kind == b"hash":
            assert plain.encode() not in b"".join(v for v in (await redis.hgetall(key)).values())
        elif kind == b"string":
            assert plain.encode() not in (await redis.get(key) or b"")
    await store.revoke("alice")
    assert await store.lookup(plain) is None
    with pytest.raises(ProxyError) as exc:
        await store.admit(info, MODEL, 100, 10)
    assert exc.value.status == 401 and "revoked" in exc.value.message


async def test_duplicate_names_are_refused_until_revoked(redis: Redis, prefix: str) -> None:
    from ccproxy_auth.keys import KeyAdminError

    store = KeyStore(redis, prefix)
    await store.create("bob")
    with pytest.raises(KeyAdminError):
        await store.create("bob")
    await store.revoke("bob")
    await store.create("bob")


async def test_fifty_concurrent_admissions_against_a_budget_for_five(redis: Redis, prefix: str) -> None:
    store = KeyStore(redis, prefix)
    _, per_request = estimate(MODEL, 400, 50)
    budget = (5 * per_request + per_request // 2) / MICRO
    info, _ = await store.create("carol", budget_usd=budget, period="day")

    async def one() -> int:
        try:
            await store.admit(info, MODEL, 400, 50)
            return 200
        except ProxyError as exc:
            return exc.status

    statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert statuses.count(200) == 5
    assert set(statuses) == {200, 402}


async def test_refusal_names_the_budget(redis: Redis, prefix: str) -> None:
    store = KeyStore(redis, prefix)
    info, _ = await store.create("dave", budget_usd=0.000001, period="week")
    with pytest.raises(ProxyError) as exc:
        await store.admit(info, MODEL, 400, 50)
    assert exc.value.status == 402 and exc.value.error_type == "billing_error"
    assert "budget of $0.00 per week" in exc.value.message and "'dave'" in exc.value.message


async def test_settlement_releases_the_reservation_and_records_real_spend(redis: Redis, prefix: str) -> None:
    store = KeyStore(redis, prefix)
    _, per_request = estimate(MODEL, 400, 50)
    info, _ = await store.create("erin", budget_usd=2 * per_request / MICRO, period="month")
    first = await store.admit(info, MODEL, 400, 50)
    second = await store.admit(info, MODEL, 400, 50)
    with pytest.raises(ProxyError):
        await store.admit(info, MODEL, 400, 50)  # two reservations hold the whole budget
    usage = UsageReport(model=MODEL, input_tokens=10, output_tokens=5)
    settled = await store.settle(first, usage)
    assert settled.cost_usd == pytest.approx((10 * 3 + 5 * 15) / 1e6)
    await store.settle(second, usage)
    # Real spend is far below the estimates: there is room again.
    await store.admit(info, MODEL, 400, 50)
    rows = await store.listing()
    row = next(r for r in rows if r.name == "erin")
    assert row.requests == 2 and row.input_tokens == 20
    assert row.period_spent_usd == pytest.approx(2 * settled.cost_usd)


async def test_rpm_is_a_bucket_that_refills(redis: Redis, prefix: str) -> None:
    store = KeyStore(redis, prefix)
    info, _ = await store.create("frank", rpm=3)

    async def one() -> ProxyError | None:
        try:
            await store.admit(info, MODEL, 100, 10)
            return None
        except ProxyError as exc:
            return exc

    results = await asyncio.gather(*(one() for _ in range(10)))
    refused = [r for r in results if r is not None]
    assert len(refused) == 7
    assert all(r.status == 429 and "3 requests per minute" in r.message for r in refused)
    assert int(refused[0].headers["retry-after"]) >= 1


async def test_tpm_counts_real_tokens_at_settlement(redis: Redis, prefix: str) -> None:
    store = KeyStore(redis, prefix)
    info, _ = await store.create("gina", tpm=1000)
    admission = await store.admit(info, MODEL, 40, 10)
    await store.settle(admission, UsageReport(model=MODEL, input_tokens=5000, output_tokens=10))
    with pytest.raises(ProxyError) as exc:
        await store.admit(info, MODEL, 40, 10)
    assert exc.value.status == 429 and "1000 tokens per minute" in exc.value.message


async def test_abandoned_reservations_expire(redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ccproxy_auth.keys as keys_module

    monkeypatch.setattr(keys_module, "RESERVATION_TTL", 1)
    store = KeyStore(redis, prefix)
    _, per_request = estimate(MODEL, 400, 50)
    info, _ = await store.create("hank", budget_usd=per_request / MICRO, period="day")
    await store.admit(info, MODEL, 400, 50)  # never settled: its gateway "died"
    with pytest.raises(ProxyError):
        await store.admit(info, MODEL, 400, 50)
    deadline = time.monotonic() + 5
    while True:
        try:
            await store.admit(info, MODEL, 400, 50)
            break
        except ProxyError:
            assert time.monotonic() < deadline, "the stale reservation was never released"
            await asyncio.sleep(0.1)


def test_period_bounds() -> None:
    ts = 1764072000.0  # 2025-11-25 12:00 UTC, a Tuesday
    assert period_bounds("day", ts)[0] == "d20251125"
    pid, start, end = period_bounds("week", ts)
    assert start.weekday() == 0 and (end - start).days == 7 and pid == "w2025W48"
    pid, start, end = period_bounds("month", ts)
    assert pid == "m202511" and start.day == 1 and end.month == 12
