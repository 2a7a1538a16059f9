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


def _prefixes(target: str, *names: str) -> tuple[ModelRule, ...]:
    return tuple(ModelRule(match=name, kind="prefix", target=target) for name in names)


#: Small models to Haiku, reasoning flagships to Opus, the rest to Sonnet; specific names first.
DEFAULT_RULES: tuple[ModelRule, ...] = (
    *_prefixes(HAIKU, "gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5-mini", "gpt-5-nano", "gpt-3.5-turbo"),
    ModelRule(match=r"^gpt-.*-(mini|nano)\b", kind="regex", target=HAIKU),
    *_prefixes(SONNET, "o1-mini", "o3-mini", "o4-mini"),
    *_prefixes(OPUS, "o1", "o3"),
    *_prefixes(SONNET, "gpt-4o", "gpt-4.1", "gpt-4-turbo", "gpt-4", "gpt-5"),
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
