"""Prices come from genai-prices (docs/accounts.md): current Claude models, cache reads and
writes, the long-context tiers, the operator's overrides, and the dearest price for a model
neither knows. Expected figures are genai-prices' own (its ``calc_price`` and its price table),
never numbers written here."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price
from genai_prices.types import TieredPrices

from ccproxy_auth.keys import MICRO, estimate, usage_cost_micro
from ccproxy_core import pricing
from ccproxy_core.client_keys import UsageReport
from ccproxy_core.models import TokenUsage, check_token_limit, find_model, known_models, max_output_tokens
from ccproxy_core.pricing import Pricing
from ccproxy_core.settings import PriceOverride, Settings

#: The models the Claude Code CLI and the SDKs use today (issue 15).
CURRENT = ["claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-opus-4-6", "claude-opus-4-7",
           "claude-opus-4-8", "claude-sonnet-4-6"]
#: (input, output, cache read, cache write, of which 1-hour writes) token counts, below and above
#: every tier's start.
USAGES = [(1, 1, 0, 0, 0), (1200, 350, 40_000, 2_500, 0), (90_000, 4_000, 15_000, 0, 0),
          (150_000, 64_000, 60_000, 9_000, 4_000), (250_000, 128_000, 0, 0, 0), (1_000, 10, 900_000, 50_000, 50_000),
          (3_000, 200, 0, 7_000, 7_000)]


def library_usd(model: str, i: int, o: int, cr: int = 0, cw: int = 0, cw_1h: int = 0) -> Decimal:
    """genai-prices' own figure: its full ``calc_price`` (its input total counts cached tokens too)."""
    usage = Usage(input_tokens=i + cr + cw, output_tokens=o, cache_read_tokens=cr, cache_write_tokens=cw,
                  cache_write_1h_tokens=cw_1h)
    return calc_price(usage, model, provider_id="anthropic").total_price


@pytest.fixture
def fresh() -> Iterator[Pricing]:
    """This process's prices with no overrides, restored afterwards."""
    yield pricing.configure(None)
    pricing.configure(None)


def test_current_models_are_priced_by_genai_prices(fresh: Pricing) -> None:
    for model in CURRENT:
        rates = fresh.rates(model)
        assert rates.source == "genai-prices", model
        for usage in USAGES:
            ours = pricing.cost_usd(model, *usage)
            assert ours > 0 and ours == pytest.approx(float(library_usd(model, *usage)), abs=1e-8), (model, usage)
        # A dated name of a current model is the same model.
        assert fresh.rates(model + "-20991231").source == "genai-prices"


def test_fast_path_equals_calc_price_for_every_claude_model(fresh: Pricing) -> None:
    for info in fresh.provider.models:
        for usage in USAGES:
            assert pricing.cost_usd(info.id, *usage) == pytest.approx(float(library_usd(info.id, *usage)), abs=1e-8), (
                info.id, usage)


def test_cache_reads_and_writes_use_the_tables_cache_prices(fresh: Pricing) -> None:
    for model in CURRENT:
        table = fresh.provider.find_model(model).get_prices(datetime.now(tz=UTC))  # type: ignore[union-attr]
        read, write, base = table.cache_read_mtok, table.cache_write_mtok, table.input_mtok
        if isinstance(base, TieredPrices):
            read, write, base = read.base, write.base, base.base  # type: ignore[union-attr]
        assert isinstance(read, Decimal) and isinstance(write, Decimal) and isinstance(base, Decimal)
        assert 0 < read < base < write, model  # reads are cheap, writes dear
        assert pricing.cost_usd(model, 0, 0, cache_read=10_000) == pytest.approx(float(read) / 100, abs=1e-8)
        assert pricing.cost_usd(model, 0, 0, cache_write=10_000) == pytest.approx(float(write) / 100, abs=1e-8)
        # 1-hour writes (part of the writes) cost the table's 1-hour price, more than 5-minute ones.
        write_1h = table.cache_write_1h_mtok
        write_1h = write_1h.base if isinstance(write_1h, TieredPrices) else write_1h
        assert isinstance(write_1h, Decimal) and write_1h > write, model
        mixed = pricing.cost_usd(model, 0, 0, cache_write=10_000, cache_write_1h=4_000)
        assert mixed == pytest.approx(float(write * 6_000 + write_1h * 4_000) / 1e6, abs=1e-8)
    tokens = TokenUsage(model="claude-opus-5-5")
    tokens.add({"input_tokens": 10, "cache_creation_input_tokens": 5_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 3_000}})
    tokens.add({"output_tokens": 7})  # message_delta: the split stays
    assert tokens.cache_write_1h_tokens == 3_000
    assert tokens.cost() == pytest.approx(float(library_usd("claude-opus-5-5", 10, 7, 0, 5_000, 3_000)), abs=1e-8)
    assert tokens.anthropic()["cache_creation"] == {"ephemeral_5m_input_tokens": 2_000,
                                                    "ephemeral_1h_input_tokens": 3_000}


def test_the_long_context_tier_applies_above_its_start(fresh: Pricing) -> None:
    now = datetime.now(tz=UTC)
    tiered = [(m.id, p, m.get_prices(now).cache_read_mtok) for m in fresh.provider.models
              if isinstance(p := m.get_prices(now).input_mtok, TieredPrices) and p.tiers]
    assert any(p.tiers[0].start == 200_000 for _, p, _ in tiered), "no Claude model has an over-200k tier"
    for model, price, read in tiered:
        assert isinstance(read, TieredPrices)
        start, tier = price.tiers[0].start, price.tiers[0].price
        at_start = pricing.cost_usd(model, start, 0)
        above = pricing.cost_usd(model, start + 1, 0)
        assert at_start == pytest.approx(start * float(price.base) / 1e6, abs=1e-8), model
        # Past the start every token costs the tier's price, not only those past it.
        assert above == pytest.approx((start + 1) * float(tier) / 1e6, abs=1e-8), model
        assert tier > price.base
        # Cache reads count towards the prompt that crosses the tier.
        crossed = pricing.cost_usd(model, 10, 0, cache_read=start)
        assert crossed == pytest.approx(float(library_usd(model, 10, 0, start)), abs=1e-8)
        assert crossed > (10 * float(price.base) + start * float(read.base)) / 1e6


def test_reservations_use_the_same_prices_and_tiers(fresh: Pricing) -> None:
    for model in [*CURRENT, "claude-sonnet-4-5"]:
        for body_bytes, max_tokens in [(4_000, 1_000), (1_200_000, 64_000)]:
            tokens, micro = estimate(model, body_bytes, max_tokens)
            assert tokens == body_bytes // 4 + max_tokens
            assert micro == math.ceil(library_usd(model, body_bytes // 4, max_tokens) * MICRO), (model, body_bytes)
    report = UsageReport(model="claude-sonnet-4-6", input_tokens=1000, output_tokens=500,
                         cache_read_tokens=10_000, cache_write_tokens=2_000)
    expected = library_usd("claude-sonnet-4-6", 1000, 500, 10_000, 2_000)
    assert usage_cost_micro(report) == math.ceil(expected * MICRO)
    tokens = TokenUsage(model="claude-sonnet-4-6")
    tokens.take({"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 10_000,
                 "cache_creation_input_tokens": 2_000})
    assert tokens.cost() == pytest.approx(float(expected), abs=1e-8)


def test_an_override_wins_and_is_read_from_the_settings(monkeypatch: pytest.MonkeyPatch, fresh: Pricing) -> None:
    monkeypatch.setenv("PRICING__OVERRIDES", '{"claude-sonnet-4-6": {"input": 1.5, "output": 7, "cache_read": 0.2},'
                                             ' "claude-inhouse-1": {"input": 2, "output": 4}}')
    overrides = Settings().pricing.overrides
    assert overrides["claude-sonnet-4-6"] == PriceOverride(input=1.5, output=7, cache_read=0.2)
    prices = pricing.configure(overrides)
    # Unset cache_write: 1.25x input; unset cache_write_1h: 2x input.
    usd = (1000 * 1.5 + 500 * 7 + 10_000 * 0.2 + 1_500 * 1.5 * 1.25 + 500 * 1.5 * 2) / 1e6
    assert pricing.cost_usd("claude-sonnet-4-6", 1000, 500, 10_000, 2_000, 500) == pytest.approx(usd)
    assert prices.rates("claude-sonnet-4-6-20260217").source == "override"  # dated names too
    assert prices.rates("claude-sonnet-4-5").source == "genai-prices"  # others keep the library's price
    # A model genai-prices does not know is priced by its override, without a warning.
    assert pricing.cost_usd("claude-inhouse-1", 1_000_000, 0, cache_read=1_000_000) == pytest.approx(2 + 0.2)
    tokens = TokenUsage(model="claude-inhouse-1", input_tokens=1_000_000)
    assert tokens.cost() == pytest.approx(2.0)
    monkeypatch.setenv("PRICING__OVERRIDES", '{"claude-x": {"input": -1, "output": 1}}')
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Settings()


def test_an_unknown_model_warns_once_and_costs_the_dearest_price(
    fresh: Pricing, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ccproxy_core.pricing")
    assert pricing.cost_usd("claude-made-up-9", 0, 0) == 0.0 and not caplog.records  # no tokens: no look-up
    usage = (1000, 500, 2000, 300, 100)
    charged = pricing.cost_usd("claude-made-up-9", *usage)
    # The dearest known price is at least what any Claude model in the table would cost.
    dearest_known = max(library_usd(m.id, *usage) for m in fresh.provider.models)
    assert charged >= float(dearest_known) > 0
    assert pricing.cost_usd("claude-made-up-9", *usage) == charged
    warnings = [r for r in caplog.records if "claude-made-up-9" in r.getMessage()]
    assert len(warnings) == 1 and "dearest" in warnings[0].getMessage()
    # The reservation and the settlement charge it too: a made-up name does not dodge a budget.
    _, unknown = estimate("claude-made-up-9", 4000, 1000)
    assert unknown >= max(estimate(m.id, 4000, 1000)[1] for m in fresh.provider.models) > 0
    settled = usage_cost_micro(UsageReport(model="gpt-4o", input_tokens=1000, output_tokens=500))
    assert settled >= max(math.ceil(library_usd(m.id, 1000, 500) * MICRO) for m in fresh.provider.models)
    # An override's price counts among the known ones.
    dear = pricing.configure({"claude-gold": PriceOverride(input=500, output=900)})
    assert dear.rates("claude-made-up-9").output == Decimal(900)


def test_warnings_about_unknown_models_are_bounded(fresh: Pricing, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ccproxy_core.pricing")
    for n in range(pricing.MAX_WARNED + 50):
        fresh.usd(f"claude-invented-{n}", 1, 1)
    assert len(caplog.records) == pricing.MAX_WARNED + 1
    assert "further unknown models are not logged" in caplog.records[-1].getMessage()


def test_every_listed_model_has_a_price_and_current_output_limits(fresh: Pricing) -> None:
    names: list[str] = []
    for model in known_models():
        assert fresh.rates(model.id).source == "genai-prices", f"{model.id} would be priced by the fallback"
        names += [model.id, *model.aliases]
    assert len(names) == len(set(names)), "an id or alias appears twice"
    for model in CURRENT:
        assert find_model(model) is not None and max_output_tokens(model) == 128_000, model
        assert check_token_limit(128_000, model) == 128_000
    # A dated name takes the longest listed name it extends: Opus 4.6, not Opus 4.
    assert find_model("claude-opus-4-6-20991231").id == "claude-opus-4-6"  # type: ignore[union-attr]
    assert max_output_tokens("claude-opus-4-1-20250805") == 32_000
