"""OpenAI model names to Claude models, first matching rule wins: the configured rules
(``MODELS__RULES``, which may redirect Claude names too), then Claude names unchanged, then the
built-in rules; an unknown name goes upstream as is (the upstream's clear 404, not a silent
substitution). Replies report the name the client asked for."""

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


class ModelMap:
    def __init__(self, rules: Sequence[ModelRule] = (), defaults: Sequence[ModelRule] = DEFAULT_RULES) -> None:
        self._rules = list(rules)
        self._defaults = list(defaults)
        self._patterns: dict[str, re.Pattern[str]] = {}
        for rule in (*rules, *defaults):
            try:
                if rule.kind == "regex":
                    self._patterns[rule.match] = re.compile(rule.match)
            except re.error as exc:
                raise ValueError(f"model rule {rule.match!r}: not a valid regular expression ({exc})") from exc

    @classmethod
    def from_settings(cls, settings: ModelsSettings) -> ModelMap:
        return cls(settings.rules, DEFAULT_RULES if settings.default_rules else ())

    def _target(self, rules: list[ModelRule], name: str) -> str | None:
        for rule in rules:
            if rule.kind == "regex":
                hit = self._patterns[rule.match].search(name) is not None
            else:
                hit = name == rule.match or (rule.kind == "prefix" and name.startswith(rule.match))
            if hit:
                return rule.target
        return None

    def resolve(self, name: str) -> str:
        """The Claude model to ask for ``name``."""
        if (target := self._target(self._rules, name)) is not None:
            return target
        if name.startswith("claude-") or find_model(name) is not None:
            return name
        return self._target(self._defaults, name) or name

    def aliases(self) -> list[str]:
        """Names worth listing in ``/v1/models``: every exact or prefix rule's name (a regex
        names no model), in rule order, without duplicates."""
        return list(dict.fromkeys(rule.match for rule in (*self._rules, *self._defaults) if rule.kind != "regex"))
