"""The Claude models ccproxy lists (``data/models.json``: names, dates, output limits), token usage,
and the ``/v1/models`` body either official SDK parses."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from importlib import resources
from typing import Any

from pydantic import BaseModel, Field

from ccproxy_core.errors import ProxyError
from ccproxy_core.pricing import cost_usd


class ModelInfo(BaseModel):
    id: str
    display_name: str
    created_at: str
    aliases: list[str] = Field(default_factory=list)
    max_output_tokens: int


@functools.cache
def _table() -> dict[str, Any]:
    return json.loads(resources.files("ccproxy_core").joinpath("data/models.json").read_text())


@functools.cache
def known_models() -> tuple[ModelInfo, ...]:
    return tuple(ModelInfo.model_validate(m) for m in _table()["models"])


@functools.lru_cache(maxsize=256)  # every Messages request asks; model names are few
def max_output_tokens(model: str) -> int:
    """The table's value, or its ``unknown_max_output_tokens`` for a newer model."""
    info = find_model(model)
    return info.max_output_tokens if info is not None else int(_table()["unknown_max_output_tokens"])


def check_token_limit(value: Any, model: str, param: str = "max_tokens") -> int:
    """``value`` if it is an integer from 1 to ``model``'s output limit, else a 400: budgets reserve
    ``max_tokens`` before a request goes upstream, so a negative or huge one must not get that far."""
    if type(value) is not int:  # bool is an int subclass: true is not a token limit
        raise ProxyError(400, f"{param}: must be a positive integer, not {json.dumps(value)[:40]}", param=param)
    limit = max_output_tokens(model)
    if not 1 <= value <= limit:
        message = f"{param}: must be an integer from 1 to {limit} (the output limit of {model!r}), not {value}"
        raise ProxyError(400, message, param=param)
    return value


def find_model(name: str) -> ModelInfo | None:
    """The listed model ``name`` is (by id or alias) or is a dated variant of: the longest listed
    name it extends with ``-`` (``claude-opus-4-6-20991231`` is Opus 4.6, not Opus 4)."""
    matches = [(len(known), model) for model in known_models() for known in (model.id, *model.aliases)
               if name == known or name.startswith(known + "-")]
    return max(matches, key=lambda match: match[0])[1] if matches else None


def one_hour_writes(usage: dict[str, Any]) -> int:
    """The 1-hour cache writes of an Anthropic ``usage`` object (``cache_creation``'s split)."""
    split = usage.get("cache_creation")
    value = split.get("ephemeral_1h_input_tokens") if isinstance(split, dict) else None
    return value if type(value) is int and value > 0 else 0


#: TokenUsage's field -> the Anthropic ``usage`` object's.
_WIRE = {"input_tokens": "input_tokens", "output_tokens": "output_tokens",
         "cache_read_tokens": "cache_read_input_tokens", "cache_write_tokens": "cache_creation_input_tokens"}


class TokenUsage(BaseModel):
    """The tokens one answer used, of which model: what billing, metrics and the access log read."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    #: Of ``cache_write_tokens``, those written to the (dearer) 1-hour cache.
    cache_write_1h_tokens: int = 0

    def add(self, usage: dict[str, Any] | None) -> None:
        """Take in an Anthropic ``usage`` object (message_start, then message_delta: later non-zero wins)."""
        if not usage:
            return
        for ours, theirs in _WIRE.items():
            setattr(self, ours, usage.get(theirs) or getattr(self, ours))
        self.cache_write_1h_tokens = one_hour_writes(usage) or self.cache_write_1h_tokens

    def take(self, usage: dict[str, Any]) -> None:
        """Set the numbers from an Anthropic ``usage`` object (a missing one is 0)."""
        for ours, theirs in _WIRE.items():
            setattr(self, ours, int(usage.get(theirs) or 0))
        self.cache_write_1h_tokens = one_hour_writes(usage)

    def anthropic(self) -> dict[str, Any]:
        one_hour = min(self.cache_write_1h_tokens, self.cache_write_tokens)
        return {
            **{theirs: getattr(self, ours) for ours, theirs in _WIRE.items()},
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_tokens - one_hour,
                "ephemeral_1h_input_tokens": one_hour,
            },
        }

    @property
    def prompt_tokens(self) -> int:
        """OpenAI counts cached prompt tokens inside the prompt total; Anthropic apart."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def by_kind(self) -> tuple[tuple[str, int], ...]:
        return (("input", self.input_tokens), ("output", self.output_tokens),
                ("cache_read", self.cache_read_tokens), ("cache_write", self.cache_write_tokens))

    def cost(self) -> float:
        return cost_usd(self.model, self.input_tokens, self.output_tokens, self.cache_read_tokens,
                        self.cache_write_tokens, self.cache_write_1h_tokens)


def models_listing(extra_aliases: list[str] | None = None) -> dict[str, Any]:
    """Anthropic's ``type/display_name/created_at`` and OpenAI's ``object/created/owned_by`` on every entry."""
    data = [{"type": "model", "id": m.id, "display_name": m.display_name, "created_at": m.created_at}
            for m in known_models()]
    page = upstream_listing({"data": data, "has_more": False}, extra_aliases)
    ids = [entry["id"] for entry in page["data"]]
    return {**page, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}


def upstream_listing(upstream: dict[str, Any], extra_aliases: list[str] | None = None) -> dict[str, Any]:
    """The upstream's ``GET /v1/models`` page with the OpenAI fields, and the aliases after its last
    page; ValueError on a body that is not a models page."""
    entries = upstream.get("data")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries):
        raise ValueError("not a models page")
    data: list[dict[str, Any]] = []
    for entry in entries:
        created_at = entry.get("created_at")
        try:
            created = int(datetime.fromisoformat(created_at).timestamp()) if isinstance(created_at, str) else 0
        except ValueError:
            created = 0
        data.append({**entry, "object": "model", "created": created, "owned_by": "anthropic"})
    has_more = upstream.get("has_more") is True
    if not has_more:
        # Only on the last page: the Anthropic SDK pages on with ``after_id=last_id``.
        ids = {entry["id"] for entry in data}
        data.extend({"type": "model", "id": alias, "display_name": alias, "created_at": "2024-01-01T00:00:00Z",
                     "object": "model", "created": 1704067200, "owned_by": "ccproxy"}
                    for alias in extra_aliases or [] if alias not in ids)
    return {**upstream, "object": "list", "data": data, "has_more": has_more}
