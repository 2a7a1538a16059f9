"""Nothing is lost across restarts: a redis-server of the test's own (append-only file on, its own
port and directory; the shared 6379 one is never touched) and ``ccproxy serve`` (which holds the
auth service) are both killed and started again; accounts, keys, spend and cooldowns remain."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic

from tests.accounts.helpers import MODEL, make_team, nonce
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.redis_server import OwnRedis


def test_accounts_keys_spend_and_cooldowns_survive_restarts(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str, aof_redis: OwnRedis
) -> None:
    team = make_team(tmp_path, fake_upstream, prefix, REDIS__URL=aof_redis.url, AUTH__STRATEGY="fill_first")
    team.add_oauth("alpha")
    team.add_oauth("beta")
    created = json.loads(team.ccproxy("keys", "create", "--json", "--name", "hana", "--budget-usd", "5",
                                      "--period", "week").stdout)
    with team.serve() as proc:
        sdk = anthropic.Anthropic(base_url=proc.url + "/api", api_key=created["key"], max_retries=0)
        n1 = nonce()
        spent_quota = f"{n1} [[fake:acct={team.fp('alpha')}/quota7d@900]]"
        sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": spent_quota}])
        assert team.seen(n1) == [("alpha", 429), ("beta", 200)]

        def settled() -> dict | None:  # type: ignore[type-arg]
            row = json.loads(team.ccproxy("keys", "list", "--json").stdout)[0]
            return row if row["requests"] == 1 else None

        before = wait_until(settled, timeout=10, message="the settlement")
    aof_redis.stop()
    aof_redis.start()
    with team.serve() as proc:
        after = json.loads(team.ccproxy("keys", "list", "--json").stdout)[0]
        assert after["spent_usd"] == before["spent_usd"] > 0
        assert after["period_spent_usd"] == before["period_spent_usd"]
        assert after["requests"] == 1 and after["name"] == "hana"
        status = team.status()
        assert set(status) == {"alpha", "beta"}
        assert status["alpha"]["cooldown"]["reason"] == "quota:seven_day"
        # The key still works, and alpha is still avoided.
        sdk = anthropic.Anthropic(base_url=proc.url + "/api", api_key=created["key"], max_retries=0)
        n2 = nonce()
        sdk.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": n2}])
        assert team.seen(n2) == [("beta", 200)]
