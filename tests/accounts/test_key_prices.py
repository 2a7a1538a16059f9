"""Current models cost what genai-prices says, end to end: ``ccproxy serve`` and the stack
(gateway and auth pricing in separate processes) with a member key on the real Redis, the
official anthropic SDK as the client, the fake upstream answering. The access log's ``cost_usd``
and the key's spend must equal genai-prices' own ``calc_price`` of each answer's usage (cache
reads, 5-minute and 1-hour writes included), an operator's override must win, and a made-up
model must be charged at least the dearest Claude price, with one warning in the log."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
import redis as redis_sync
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot

from tests.accounts.helpers import REDIS_URL, nonce
from tests.accounts.test_keys import create_key, keys_list, team_with_key
from tests.support.fake import FakeUpstream
from tests.support.process import Proc, wait_until
from tests.support.stack import StackProc, launch_stack

OVERRIDDEN = "claude-opus-4-7"
OVERRIDE = {"input": 7.0, "output": 35.0, "cache_read": 0.7, "cache_write": 8.75}
MADE_UP = "claude-zz-made-up-1"
MODELS = ["claude-sonnet-4-6", "claude-sonnet-4-6", "claude-opus-5-5", "claude-haiku-5-5", OVERRIDDEN, MADE_UP]


def usage_of(answer: anthropic.types.Message) -> tuple[int, int, int, int, int]:
    u = answer.usage
    one_hour = u.cache_creation.ephemeral_1h_input_tokens if u.cache_creation else 0
    return u.input_tokens, u.output_tokens, u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0, one_hour


def library_usd(model: str, i: int, o: int, cr: int, cw: int, cw_1h: int) -> Decimal:
    usage = Usage(input_tokens=i + cr + cw, output_tokens=o, cache_read_tokens=cr, cache_write_tokens=cw,
                  cache_write_1h_tokens=cw_1h)
    return calc_price(usage, model, provider_id="anthropic").total_price


@pytest.mark.parametrize("deployment", ["serve", "stack"])
def test_current_models_are_charged_genai_prices_in_the_log_and_the_budget(
    tmp_path: Path, fake_upstream: FakeUpstream, prefix: str, deployment: str
) -> None:
    team = team_with_key(tmp_path, fake_upstream, prefix)
    created = create_key(team, "--name", "gina", "--budget-usd", "50")
    overrides = json.dumps({OVERRIDDEN: OVERRIDE})
    proc: Proc | StackProc
    if deployment == "serve":
        proc = team.serve(PRICING__OVERRIDES=overrides)
    else:  # gateway (access log) and auth (reservations, spend) price in separate processes
        proc = launch_stack(team.run_dir, fake_url=fake_upstream.url, claude_config_dir=None,
                            env={"REDIS__KEY_PREFIX": prefix, "AUTH__SECRET_BACKEND": "file",
                                 "PRICING__OVERRIDES": overrides})
    try:
        sdk = anthropic.Anthropic(base_url=proc.url + "/api", api_key=created["key"], max_retries=0)
        n = nonce()
        # A system prompt cached for an hour: the first answer writes the cache, the later ones read it.
        rules = f"{n} " + "house rules. " * 300
        system: Any = [{"type": "text", "text": rules, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
        answers = [sdk.messages.create(model=model, max_tokens=64, system=system,
                                       messages=[{"role": "user", "content": f"{n} question {i}"}])
                   for i, model in enumerate(MODELS)]
        assert usage_of(answers[0])[4] > 0 and usage_of(answers[1])[2] > 0, "no 1-hour cache write, then read"

        stream = redis_sync.Redis.from_url(REDIS_URL)

        def events() -> dict[str, dict[str, Any]] | None:
            docs = [json.loads(fields[b"e"]) for _, fields in stream.xrange(prefix + "access-log")]
            mine = {d["upstream_request_id"]: d for d in docs if d.get("key_id") == created["id"]}
            return mine if len(mine) == len(MODELS) else None

        logged = wait_until(events, timeout=10, message="the access-log events")
        expected: list[Decimal] = []
        for model, answer in zip(MODELS, answers, strict=True):
            doc = logged[answer._request_id]  # type: ignore[index]
            i, o, cr, cw, cw_1h = usage_of(answer)
            assert (doc["model_used"], doc["input_tokens"], doc["cache_read_tokens"]) == (model, i, cr)
            if model == OVERRIDDEN:
                usd = (i * Decimal("7") + o * Decimal("35") + cr * Decimal("0.7") + (cw - cw_1h) * Decimal("8.75")
                       + cw_1h * Decimal("14")) / 10**6  # unset cache_write_1h: twice the input price
            elif model == MADE_UP:
                # At least what the dearest Claude model in genai-prices' table would cost.
                usd = Decimal(str(doc["cost_usd"]))
                dearest = max(library_usd(m.id, i, o, cr, cw, cw_1h) for m in get_snapshot().find_provider(
                    None, "anthropic", None).models)
                assert usd >= dearest > 0
            else:
                usd = library_usd(model, i, o, cr, cw, cw_1h)
            assert usd > 0 and doc["cost_usd"] == pytest.approx(float(usd), abs=1e-8), model
            expected.append(usd)

        # The key was charged the same figures (each settlement rounds up to a micro-dollar).
        spent = sum(math.ceil(usd * 10**6) for usd in expected) / 10**6
        row = wait_until(lambda: (r := keys_list(team)["gina"])["requests"] == len(MODELS) and r, timeout=10,
                         message="settlement")
        assert row["spent_usd"] == pytest.approx(spent, abs=1e-9)
        # One warning per process for the made-up model (it was priced several times), naming it.
        logs = [proc.log_text()] if isinstance(proc, Proc) else [
            proc.services[name].log_text() for name in ("gateway", "auth")]
        for log in logs:
            assert log.count(f"no price for model '{MADE_UP}'") == 1 and log.count("no price for model") == 1
        assert created["key"] not in proc.log_text()
    finally:
        proc.stop()
