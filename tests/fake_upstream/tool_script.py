"""Scripted tool use, so Claude Code (SDK mode) runs a real tool against the fake.

``[[fake:call=NAME?key=value&key2=value2]]`` in the last user message: the answer is a short text
and a ``tool_use`` of tool NAME with exactly that input (values URL-encoded, all strings), e.g.
``[[fake:call=Read?file_path=/tmp/ws/notes.txt]]``. Claude Code runs the tool and calls again with
the ``tool_result``; that call's last user message carries no marker, so the fake answers as
always, echoing the tool result (``[tool results: <id>=<content>]``): the file's content comes
back in Claude's answer. Unlike ``[[fake:tool]]``, which calls the first tool with made-up
input, this names the tool and its input.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from tests.fake_upstream.scenarios import Scenario, register_marker


@register_marker("call")
def _call(scenario: Scenario, value: str | None) -> None:
    scenario.extra["call"] = value


def scripted_call(scenario: Scenario) -> tuple[str, dict[str, Any]] | None:
    """(tool name, input) when the request asked for a scripted call."""
    value = scenario.extra.get("call")
    if not value:
        return None
    name, _, query = value.partition("?")
    return name, dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
