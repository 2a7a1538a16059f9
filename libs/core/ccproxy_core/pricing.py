"""What tokens cost: genai-prices' Anthropic table (pinned in uv.lock) under ``PRICING__OVERRIDES``.
A model neither knows costs the *dearest* known price, so a made-up name cannot slip past a budget.
The sum is genai-prices' ``calc_unit_price`` without its generic usage machinery (~5 µs, not ~200)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices, calc_unit_price

from ccproxy_core.settings import PriceOverride

log = logging.getLogger(__name__)

MTOK = 1_000_000
#: A client can invent any number of model names: warn of this many.
MAX_WARNED = 256

PriceValue = Decimal | TieredPrices | None


@dataclass(frozen=True)
class Rates:
    """USD per million tokens; a tiered rate switches on the prompt's size."""

    input: PriceValue
    output: PriceValue
    cache_read: PriceValue
    cache_write: PriceValue
    cache_write_1h: PriceValue
    #: Where the rates come from: ``genai-prices``, ``override`` or ``dearest`` (unknown model).
    source: str

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0,
             cache_write_1h: int = 0) -> Decimal:
        """``cache_write_1h``: the part of ``cache_write`` written to the 1-hour cache."""
        prompt = input_tokens + cache_read + cache_write
        one_hour = min(cache_write_1h, cache_write)
        return (
            calc_unit_price(self.input, input_tokens, prompt, MTOK)
            + calc_unit_price(self.output, output_tokens, prompt, MTOK)
            + calc_unit_price(self.cache_read, cache_read, prompt, MTOK)
            + calc_unit_price(self.cache_write, cache_write - one_hour, prompt, MTOK)
            + calc_unit_price(self.cache_write_1h, one_hour, prompt, MTOK)
        )


def _top(value: PriceValue) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, TieredPrices):
        return max([value.base, *(tier.price for tier in value.tiers)])
    return value


def _override_rates(price: PriceOverride) -> Rates:
    def dec(x: float) -> Decimal:
        return Decimal(repr(x))

    read = price.cache_read if price.cache_read is not None else price.input * 0.1
    write = price.cache_write if price.cache_write is not None else price.input * 1.25
    write_1h = price.cache_write_1h if price.cache_write_1h is not None else price.input * 2
    return Rates(dec(price.input), dec(price.output), dec(read), dec(write), dec(write_1h), "override")


def _rates(prices: ModelPrice) -> Rates:
    # Without a cache price, cached tokens are input tokens (as genai-prices counts them).
    base = prices.input_mtok
    read, write, write_1h = prices.cache_read_mtok, prices.cache_write_mtok, prices.cache_write_1h_mtok
    write = base if write is None else write
    return Rates(base, prices.output_mtok, base if read is None else read, write,
                 write if write_1h is None else write_1h, "genai-prices")


class Pricing:
    def __init__(self, overrides: Mapping[str, PriceOverride] | None = None) -> None:
        # From genai-prices' bundled data: never fetched at run time.
        self.provider: Provider = data_snapshot.get_snapshot().find_provider(None, "anthropic", None)
        self._overrides = {name.lower(): _override_rates(p) for name, p in (overrides or {}).items()}
        # Longest first, so ``claude-opus-4-1`` wins over ``claude-opus-4`` for a dated name.
        self._override_names = sorted(self._overrides, key=len, reverse=True)
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self.find = functools.lru_cache(maxsize=1024)(self._find)

    def _find(self, model: str) -> ModelInfo | Rates | None:
        name = model.lower()
        for prefix in self._override_names:
            if name == prefix or name.startswith(prefix + "-") or name.startswith(prefix + "@"):
                return self._overrides[prefix]
        return self.provider.find_model(name)

    def rates(self, model: str) -> Rates:
        """``model``'s rates now, or the dearest known ones (and a warning)."""
        found = self.find(model)
        if isinstance(found, Rates):
            return found
        when = datetime.now(tz=UTC)
        if found is not None:
            return _rates(found.get_prices(when))
        self._warn(model)
        return self.dearest(when.date().isoformat())

    @functools.lru_cache(maxsize=4)  # noqa: B019 - one Pricing per process; keyed by day (prices have start dates)
    def dearest(self, day: str) -> Rates:
        when = datetime.fromisoformat(day).replace(tzinfo=UTC)
        tables = [_rates(m.get_prices(when)) for m in self.provider.models] + list(self._overrides.values())

        def top(kind: str) -> Decimal:
            return max(_top(getattr(r, kind)) for r in tables)

        return Rates(top("input"), top("output"), top("cache_read"), top("cache_write"), top("cache_write_1h"),
                     "dearest")

    def _warn(self, model: str) -> None:
        with self._lock:
            if model in self._warned or len(self._warned) > MAX_WARNED:
                return
            self._warned.add(model)
            last = len(self._warned) > MAX_WARNED
        log.warning(
            "no price for model %r: charging the dearest known price (set PRICING__OVERRIDES to price it)%s",
            model[:100], "; further unknown models are not logged" if last else "",
        )

    def usd(self, model: str, input_tokens: int, output_tokens: int, cache_read: int = 0,
            cache_write: int = 0, cache_write_1h: int = 0) -> Decimal:
        """Exact USD; no tokens cost 0 without a look-up (a refused request's model is worth no warning)."""
        if not (input_tokens or output_tokens or cache_read or cache_write):
            return Decimal(0)
        return self.rates(model).cost(input_tokens, output_tokens, cache_read, cache_write, cache_write_1h)


_current: Pricing | None = None


def configure(overrides: Mapping[str, PriceOverride] | None) -> Pricing:
    """Each service, from its settings, when it starts."""
    global _current
    _current = Pricing(overrides)
    return _current


def current() -> Pricing:
    """The last :func:`configure`'s, else genai-prices' alone."""
    return _current or configure(None)


def cost_usd(model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0,
             cache_write_1h: int = 0) -> float:
    """To the 8th decimal (the access log's ``cost_usd``)."""
    return round(float(current().usd(model, input_tokens, output_tokens, cache_read, cache_write, cache_write_1h)), 8)
