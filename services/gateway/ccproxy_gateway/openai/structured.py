"""JSON mode (``response_format`` / ``text.format``) through a tool Claude must call, whose input
is always a JSON object valid against its schema (words only work most of the time). Its input
is the answer's text and streams as text, finish reason ``stop``. Where forcing the tool is
impossible (with thinking; or with the client's tools and ``tool_choice`` auto, when ``any`` is
used) the system prompt asks for it instead.
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
