"""The account pool end to end: ``ccproxy serve`` with several named accounts, the fake upstream
answering per account (429 quota/throttle, 529, 401), the official SDK as the client.

Every test uses a Redis key prefix of its own, on the real Redis (REDIS__URL), so the pool state
(cooldowns, sticky sessions, health) is what production would keep.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.accounts.helpers import MODEL, REDIS_URL, client, make_team, nonce
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until


def ask(proc, text: str, **kwargs):  # type: ignore[no-untyped-def]
    return client(proc).messages.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": text}], **kwargs
    )


def test_spent_quota_fails_over_then_cooldown_expires(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = make_team(tmp_path, fake_upstream, prefix, AUTH__STRATEGY="fill_first", REDIS__URL=REDIS_URL)
    team.add_oauth("alpha")
    team.add_oauth("beta")
    with team.serve() as proc:
        # alpha's 5-hour quota is spent (resets in 8 s, so a loaded machine still reads the
        # cooldown below before it ends): the request is retried on beta.
        n1 = nonce()
        answer = ask(proc, f"{n1} [[fake:acct={team.fp('alpha')}/quota5h@8]]")
        assert answer.content[0].text.startswith("Echo:")
        assert team.seen(n1) == [("alpha", 429), ("beta", 200)]
        status = team.status()
        assert status["alpha"]["cooldown"]["reason"] == "quota:five_hour"
        assert status["alpha"]["quota"]["5h"]["status"] == "rejected"
        assert status["beta"]["cooldown"] is None and status["beta"]["healthy"]
        # While alpha cools down, fill-first sends everything to beta.
        n2 = nonce()
        ask(proc, n2)
        assert team.seen(n2) == [("beta", 200)]

        # After the reset, alpha (first in fill order) serves again.
        def back_on_alpha() -> bool:
            n = nonce()
            ask(proc, n)
            return team.seen(n) == [("alpha", 200)]

        wait_until(back_on_alpha, timeout=20, interval=0.3, message="alpha's cooldown to expire")
        metrics = httpx.get(proc.url + "/metrics").text
        assert 'ccproxy_account_cooldowns_total{account="alpha",reason="quota",service="gateway"} 1.0' in metrics


@pytest.mark.parametrize("spec", ["429", "529"])
def test_throttle_without_retry_after_and_overload_switch_accounts(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str, spec: str
) -> None:
    team = make_team(
        tmp_path, fake_upstream, prefix, AUTH__STRATEGY="fill_first", REDIS__URL=REDIS_URL,
        AUTH__DEFAULT_COOLDOWN_SECONDS="30", AUTH__OVERLOAD_COOLDOWN_SECONDS="30",
    )
    team.add_oauth("alpha")
    team.add_api_key("beta")
    with team.serve() as proc:
        n1 = nonce()
        assert ask(proc, f"{n1} [[fake:acct={team.fp('alpha')}/{spec}]]").content[0].text.startswith("Echo:")
        assert team.seen(n1) == [("alpha", int(spec)), ("beta", 200)]
        cooldown = team.status()["alpha"]["cooldown"]
        assert cooldown["reason"] == ("rate_limited" if spec == "429" else "overloaded")
        assert 20 < cooldown["until"] - time.time() <= 30


def test_short_throttle_waits_on_the_same_account(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    """retry-after 1 s is a throttle: keep the account (and its prompt cache), wait, retry."""
    team = make_team(tmp_path, fake_upstream, prefix, AUTH__STRATEGY="fill_first", REDIS__URL=REDIS_URL)
    team.add_oauth("alpha")
    team.add_oauth("beta")
    with team.serve() as proc:
        n1 = nonce()
        started = time.monotonic()
        ask(proc, f"{n1} [[fake:acct={team.fp('alpha')}/429@1x1]]")
        assert time.monotonic() - started >= 1.0
        assert team.seen(n1) == [("alpha", 429), ("alpha", 200)]
        assert team.status()["alpha"]["cooldown"] is None


def test_long_retry_after_cools_down_and_both_accounts_limited_passes_429(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = make_team(tmp_path, fake_upstream, prefix, AUTH__STRATEGY="fill_first", REDIS__URL=REDIS_URL)
    team.add_oauth("alpha")
    team.add_oauth("beta")
    with team.serve() as proc:
        n1 = nonce()
        rules = f"{team.fp('alpha')}/429@120;{team.fp('beta')}/429@120"
        with pytest.raises(Exception) as caught:
            ask(proc, f"{n1} [[fake:acct={rules}]]")
        assert getattr(caught.value, "status_code", None) == 429
        # Retried once on beta, then the upstream's own 429 reached the client.
        assert team.seen(n1) == [("alpha", 429), ("beta", 429)]
        status = team.status()
        assert status["alpha"]["cooldown"]["reason"] == "throttle"
        assert status["beta"]["cooldown"]["reason"] == "throttle"


def test_sticky_sessions_keep_a_conversation_on_its_account(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = make_team(tmp_path, fake_upstream, prefix, AUTH__STRATEGY="round_robin", REDIS__URL=REDIS_URL)
    team.add_oauth("alpha")
    team.add_oauth("beta")
    with team.serve() as proc:
        used: dict[str, set[str]] = {}
        for conversation in range(4):
            for _turn in range(3):
                n = nonce()
                ask(proc, n, metadata={"user_id": f"user-{prefix}-{conversation}"})
                (account, status), = team.seen(n)
                assert status == 200
                used.setdefault(str(conversation), set()).add(account)
        assert all(len(accounts) == 1 for accounts in used.values()), used
        assert set().union(*used.values()) == {"alpha", "beta"}, "round robin spreads new conversations"
        # Without a session key, round robin alternates.
        seen = set()
        for _ in range(4):
            n = nonce()
            ask(proc, n)
            seen.add(team.seen(n)[0][0])
        assert seen == {"alpha", "beta"}


def test_cached_prefix_is_a_session_key(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> None:
    team = make_team(tmp_path, fake_upstream, prefix, AUTH__STRATEGY="round_robin", REDIS__URL=REDIS_URL)
    team.add_oauth("alpha")
    team.add_oauth("beta")
    with team.serve() as proc:
        system = [{"type": "text", "text": f"long shared context {prefix} " * 50,
                   "cache_control": {"type": "ephemeral"}}]
        accounts = set()
        for _ in range(4):
            n = nonce()
            ask(proc, n, system=system)
            accounts.add(team.seen(n)[0][0])
        assert len(accounts) == 1


def test_401_that_survives_refresh_marks_unhealthy_and_fails_over(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str
) -> None:
    team = make_team(tmp_path, fake_upstream, prefix, AUTH__STRATEGY="fill_first", REDIS__URL=REDIS_URL)
    team.add_oauth("alpha", revoked=True, refresh_valid=False)
    team.add_oauth("beta")
    with team.serve() as proc:
        n1 = nonce()
        assert ask(proc, n1).content[0].text.startswith("Echo:")
        assert team.seen(n1) == [("alpha", 401), ("beta", 200)]
        status = team.status()
        assert status["alpha"]["healthy"] is False and "refused" in status["alpha"]["problem"]
        assert status["beta"]["healthy"] is True
        # The next request does not even try alpha.
        n2 = nonce()
        ask(proc, n2)
        assert team.seen(n2) == [("beta", 200)]
        metrics = httpx.get(proc.url + "/metrics").text
        assert 'ccproxy_account_unhealthy_total{account="alpha",service="gateway"} 1.0' in metrics
        assert "UNHEALTHY" in proc.log_text()
        assert team.tokens["alpha"] not in proc.log_text()


def test_single_default_account_passes_429_through_unchanged(
    tmp_path: Path, fake_upstream: FakeUpstream, start_serve, prefix: str  # type: ignore[no-untyped-def]
) -> None:
    """No accounts configured: the CLI login, as before; a quota 429 reaches the client as sent."""
    proc = start_serve(env={"REDIS__KEY_PREFIX": prefix})
    for _ in range(2):
        resp = httpx.post(proc.url + "/api/v1/messages", timeout=30, json={
            "model": MODEL, "max_tokens": 10,
            "messages": [{"role": "user", "content": "x [[fake:acct=*/quota5h@600]]"}]})
        assert resp.status_code == 429
        assert resp.headers["anthropic-ratelimit-unified-status"] == "rejected"
        assert resp.headers.get("request-id"), "the upstream's own answer, not ccproxy's"
