"""In-band behaviour: ``[[fake:NAME]]`` or ``[[fake:NAME=VALUE]]`` markers in the last user message.

Markers live in the request, not in server state, so tests running at the same time against one
fake never see each other's scenarios. To add a marker, register a handler from your own module::

    @register_marker("quota")
    def _quota(scenario: Scenario, value: str | None) -> None:
        scenario.extra["quota"] = value

Unregistered markers are kept in ``scenario.extra`` too, so an extension can simply read them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MARKER = re.compile(r"\[\[fake:([a-z_][a-z0-9_]*)(?:=([^\]]*))?\]\]")


@dataclass
class Scenario:
    tool: bool = False
    thinking: bool = False
    error_status: int | None = None
    retry_after: int = 3
    midstream_error: bool = False
    #: Seconds to wait before each event (streams) or before the answer (non-streamed).
    slow: float = 0.0
    hang: bool = False
    stall: bool = False
    #: Stream: after ``message_start``, wait until ``POST /_fake/release/{id}`` (or the client leaves).
    hold: bool = False
    long: int | None = None
    json: bool = False
    echo_request: bool = False
    #: A spent subscription quota: (window, seconds until its reset), answered as a 429.
    quota: tuple[str, int] | None = None
    extra: dict[str, str | None] = field(default_factory=dict)


MarkerHandler = Callable[[Scenario, "str | None"], None]
_HANDLERS: dict[str, MarkerHandler] = {}


def register_marker(name: str) -> Callable[[MarkerHandler], MarkerHandler]:
    def deco(fn: MarkerHandler) -> MarkerHandler:
        _HANDLERS[name] = fn
        return fn

    return deco


def _flag(attr: str) -> MarkerHandler:
    def handler(scenario: Scenario, _value: str | None) -> None:
        setattr(scenario, attr, True)

    return handler


for _name, _attr in {
    "tool": "tool",
    "thinking": "thinking",
    "midstream_error": "midstream_error",
    "hang": "hang",
    "stall": "stall",
    "hold": "hold",
    "json": "json",
    "echo_request": "echo_request",
}.items():
    register_marker(_name)(_flag(_attr))


@register_marker("error")
def _error(scenario: Scenario, value: str | None) -> None:
    scenario.error_status = int(value or 500)


@register_marker("retry_after")
def _retry_after(scenario: Scenario, value: str | None) -> None:
    scenario.retry_after = int(value or 3)


@register_marker("quota")
def _quota(scenario: Scenario, value: str | None) -> None:
    window, _, seconds = (value or "five_hour").partition(":")
    scenario.quota = (window, int(seconds or 3 * 3600))


@register_marker("slow")
def _slow(scenario: Scenario, value: str | None) -> None:
    scenario.slow = float(value or 0.2)


@register_marker("long")
def _long(scenario: Scenario, value: str | None) -> None:
    scenario.long = int(value or 100)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def last_user_message(body: dict[str, Any]) -> dict[str, Any] | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


def last_user_text(body: dict[str, Any]) -> str:
    message = last_user_message(body)
    return text_of(message.get("content")) if message else ""


def strip_markers(text: str) -> str:
    return MARKER.sub("", text).strip()


def tool_result_text(body: dict[str, Any]) -> str:
    """The text of the ``tool_result`` blocks in the last user message: a tool's output can carry
    markers too, so a scripted tool loop goes on for as many steps as its tools say."""
    message = last_user_message(body)
    content = message.get("content") if message else None
    if not isinstance(content, list):
        return ""
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return "\n".join(text_of(b.get("content")) for b in results)


def parse(body: dict[str, Any]) -> Scenario:
    scenario = Scenario()
    for name, value in MARKER.findall(last_user_text(body) + "\n" + tool_result_text(body)):
        value = value if value != "" else None
        scenario.extra[name] = value
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(scenario, value)
    return scenario
