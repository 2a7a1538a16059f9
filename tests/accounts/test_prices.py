"""The pricing table (data/models.json) is complete and follows Anthropic's caching rules, and
costs count cache reads and writes (docs/accounts.md says how to update it)."""

from __future__ import annotations

import pytest

from ccproxy_auth.keys import MICRO, estimate, usage_cost_micro
from ccproxy_core.client_keys import UsageReport
from ccproxy_core.models import cost_usd, find_model, known_models


def test_every_model_has_all_four_prices_consistent_with_caching_rules() -> None:
    names: list[str] = []
    for model in known_models():
        p = model.price
        assert p.output > p.input > p.cache_read > 0, model.id
        # Prompt caching: reads cost 0.1x the input price, 5-minute writes 1.25x.
        assert p.cache_read == pytest.approx(0.1 * p.input), model.id
        assert p.cache_write == pytest.approx(1.25 * p.input), model.id
        names += [model.id, *model.aliases]
    assert len(names) == len(set(names)), "an id or alias appears twice"


def test_cost_counts_cache_reads_and_writes() -> None:
    usd = cost_usd("claude-sonnet-4-5-20250929", 1000, 500, cache_read=10_000, cache_write=2_000)
    assert usd == pytest.approx((1000 * 3 + 500 * 15 + 10_000 * 0.3 + 2_000 * 3.75) / 1e6)
    report = UsageReport(model="claude-sonnet-4-5", input_tokens=1000, output_tokens=500,
                         cache_read_tokens=10_000, cache_write_tokens=2_000)
    assert usage_cost_micro(report) == pytest.approx(usd * MICRO, abs=1)
    assert find_model("claude-sonnet-4-5-20991231") is not None, "a newer dated name prices like its family"


def test_unknown_models_are_reserved_at_the_dearest_price() -> None:
    _, unknown = estimate("claude-future-9", 4000, 1000)
    _, opus = estimate("claude-opus-4-1-20250805", 4000, 1000)
    assert unknown >= opus > 0


def test_a_model_newer_than_the_table_prices_like_its_family() -> None:
    newest_opus = next(m for m in known_models() if "opus" in m.id)
    assert cost_usd("claude-opus-5-5", 1_000_000, 0) == pytest.approx(newest_opus.price.input)
    assert cost_usd("gpt-4o", 1_000_000, 0) == 0.0
