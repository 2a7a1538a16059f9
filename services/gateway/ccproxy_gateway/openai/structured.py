"""JSON mode (``response_format`` / ``text.format``) through a tool Claude must call.

Asking Claude for JSON in words works most of the time; a tool call works every time: its input
is always a JSON object, validated against the tool's ``input_schema``. So JSON mode adds one
tool, ``json_response``, whose schema is the client's (``json_schema``) or any object
(``json_object``), and forces it. Its input comes back to the client as the message text (and
streams as text deltas), the finish reason ``stop``, so the client sees plain JSON content.

Forcing is impossible in two cases, where the tool is offered and the system prompt asks for it
instead: with extended thinking (Claude refuses a forced tool then), and when the client's own
tools are in play with ``tool_choice`` auto (Claude must stay free to call those; ``any`` is
used, which still rules out a plain-text answer).
"""

from __future__ import annotations

from typing import Any

from ccproxy_core.errors import ProxyError

JSON_TOOL = "json_response"
INSTRUCTION = (
    f"Give your final answer by calling the `{JSON_TOOL}` tool; its input is the JSON response. "
    "Do not answer in plain text."
)


def json_tool(schema: dict[str, Any] | None, name: str | None, description: str | None, where: str) -> dict[str, Any]:
    if schema is None:
        schema = {"type": "object"}
    elif schema.get("type", "object") != "object":
        raise ProxyError(400, f"{where}: the schema's root must be an object", param=where)
    text = "Return the final answer as this JSON object."
    if name:
        text += f" Schema: {name}."
    if description:
        text += f" {description}"
    return {"name": JSON_TOOL, "description": text, "input_schema": schema}


def apply_json_mode(body: dict[str, Any], tool: dict[str, Any], client_tools: bool) -> None:
    """Add the JSON tool to an Anthropic request body and make Claude use it."""
    body["tools"] = [*body.get("tools", []), tool]
    choice = body.get("tool_choice") or {}
    if body.get("thinking"):
        body["tool_choice"] = {"type": "auto"} if choice.get("type") in (None, "any", "none") else choice
        _instruct(body)
    elif not client_tools or choice.get("type") == "none":
        body["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    elif choice.get("type") in (None, "auto", "any"):
        body["tool_choice"] = {**choice, "type": "any"}
        _instruct(body)
    # A named client tool stays forced: that turn is a tool call, not the final answer.


def _instruct(body: dict[str, Any]) -> None:
    body["system"] = [*body.get("system", []), {"type": "text", "text": INSTRUCTION}]
