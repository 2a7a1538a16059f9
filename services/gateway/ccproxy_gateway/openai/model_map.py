"""OpenAI model names to Claude models: an ordered rule list, first match wins.

Order of lookup: the configured rules (``MODELS__RULES``), so a user can also redirect Claude
names (a retired model to its successor); then Claude names pass through unchanged; then the
built-in rules below; an unknown name goes upstream as it is, so a typo is the upstream's clear
404, not a silent substitution. Replies report the name the client asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ccproxy_core.models import find_model
from ccproxy_core.settings import ModelRule, ModelsSettings

OPUS = "claude-opus-5-5"
SONNET = "claude-sonnet-5-5"
HAIKU = "claude-haiku-5-5"

#: Small models to Haiku, reasoning flagships to Opus, the rest to Sonnet; specific names first.
DEFAULT_RULES: tuple[ModelRule, ...] = (
    ModelRule(match="gpt-4o-mini", kind="prefix", target=HAIKU),
    ModelRule(match="gpt-4.1-mini", kind="prefix", target=HAIKU),
    ModelRule(match="gpt-4.1-nano", kind="prefix", target=HAIKU),
    ModelRule(match="gpt-5-mini", kind="prefix", target=HAIKU),
    ModelRule(match="gpt-5-nano", kind="prefix", target=HAIKU),
    ModelRule(match="gpt-3.5-turbo", kind="prefix", target=HAIKU),
    ModelRule(match=r"^gpt-.*-(mini|nano)\b", kind="regex", target=HAIKU),
    ModelRule(match="o1-mini", kind="prefix", target=SONNET),
    ModelRule(match="o3-mini", kind="prefix", target=SONNET),
    ModelRule(match="o4-mini", kind="prefix", target=SONNET),
    ModelRule(match="o1", kind="prefix", target=OPUS),
    ModelRule(match="o3", kind="prefix", target=OPUS),
    ModelRule(match="gpt-4o", kind="prefix", target=SONNET),
    ModelRule(match="gpt-4.1", kind="prefix", target=SONNET),
    ModelRule(match="gpt-4-turbo", kind="prefix", target=SONNET),
    ModelRule(match="gpt-4", kind="prefix", target=SONNET),
    ModelRule(match="gpt-5", kind="prefix", target=SONNET),
)


class _Compiled:
    __slots__ = ("kind", "match", "pattern", "target")

    def __init__(self, rule: ModelRule) -> None:
        self.kind = rule.kind
        self.match = rule.match
        self.target = rule.target
        try:
            self.pattern = re.compile(rule.match) if rule.kind == "regex" else None
        except re.error as exc:
            raise ValueError(f"model rule {rule.match!r}: not a valid regular expression ({exc})") from exc

    def matches(self, name: str) -> bool:
        if self.kind == "exact":
            return name == self.match
        if self.kind == "prefix":
            return name.startswith(self.match)
        assert self.pattern is not None
        return self.pattern.search(name) is not None


class ModelMap:
    def __init__(self, rules: Sequence[ModelRule] = (), defaults: Sequence[ModelRule] = DEFAULT_RULES) -> None:
        self._rules = [_Compiled(r) for r in rules]
        self._defaults = [_Compiled(r) for r in defaults]

    @classmethod
    def from_settings(cls, settings: ModelsSettings) -> ModelMap:
        return cls(settings.rules, DEFAULT_RULES if settings.default_rules else ())

    def resolve(self, name: str) -> str:
        """The Claude model to ask for ``name``."""
        for rule in self._rules:
            if rule.matches(name):
                return rule.target
        if name.startswith("claude-") or find_model(name) is not None:
            return name
        for rule in self._defaults:
            if rule.matches(name):
                return rule.target
        return name

    def aliases(self) -> list[str]:
        """Names worth listing in ``/v1/models``: every exact or prefix rule's name (a regex
        names no model), in rule order, without duplicates."""
        seen: dict[str, None] = {}
        for rule in (*self._rules, *self._defaults):
            if rule.kind != "regex":
                seen.setdefault(rule.match, None)
        return list(seen)
