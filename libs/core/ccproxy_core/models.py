"""The Claude models ccproxy knows, their prices, and the ``/v1/models`` body.

The list is data (``data/models.json``), not code, so updating a price or adding a model is a
one-line change. The listing body carries both the Anthropic and the OpenAI field names, so
``client.models.list()`` parses it in either official SDK.
"""

from __future__ import annotations

import calendar
import functools
import json
import time
from importlib import resources
from typing import Any

from pydantic import BaseModel, Field


class Price(BaseModel):
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write: float


class ModelInfo(BaseModel):
    id: str
    display_name: str
    created_at: str
    aliases: list[str] = Field(default_factory=list)
    price: Price


@functools.cache
def known_models() -> tuple[ModelInfo, ...]:
    raw = json.loads(resources.files("ccproxy_core").joinpath("data/models.json").read_text())
    return tuple(ModelInfo.model_validate(m) for m in raw["models"])


def find_model(name: str) -> ModelInfo | None:
    for model in known_models():
        if name == model.id or name in model.aliases:
            return model
    # Dated variants we do not list yet still price like their family.
    for model in known_models():
        if any(name.startswith(alias) for alias in model.aliases):
            return model
    return None


def price_for(model: str) -> Price | None:
    """The price of ``model``; a model newer than the table prices like the newest of its family
    (opus, sonnet, haiku), so new releases are estimated rather than counted as free."""
    info = find_model(model)
    if info is not None:
        return info.price
    for family in ("opus", "sonnet", "haiku"):
        if family in model:
            return next((m.price for m in known_models() if family in m.id), None)
    return None


def cost_usd(model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> float:
    p = price_for(model)
    if p is None:
        return 0.0
    total = (
        input_tokens * p.input + output_tokens * p.output + cache_read * p.cache_read + cache_write * p.cache_write
    )
    return round(total / 1_000_000, 8)


def _epoch(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def models_listing(extra_aliases: list[str] | None = None) -> dict[str, Any]:
    """One body for both SDKs: Anthropic's ``type/display_name/created_at`` and
    OpenAI's ``object/created/owned_by`` on every entry."""
    data: list[dict[str, Any]] = []
    for model in known_models():
        data.append(
            {
                "type": "model",
                "id": model.id,
                "display_name": model.display_name,
                "created_at": model.created_at,
                "object": "model",
                "created": _epoch(model.created_at),
                "owned_by": "anthropic",
            }
        )
    for alias in extra_aliases or []:
        data.append(
            {
                "type": "model",
                "id": alias,
                "display_name": alias,
                "created_at": "2024-01-01T00:00:00Z",
                "object": "model",
                "created": _epoch("2024-01-01T00:00:00Z"),
                "owned_by": "ccproxy",
            }
        )
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
