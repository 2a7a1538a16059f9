"""What the two request translations (Chat Completions, Responses) share: turns, tool
choice, JSON mode, and the Anthropic body around the messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ccproxy_core.errors import ProxyError
from ccproxy_core.models import check_token_limit, max_output_tokens
from ccproxy_core.settings import OpenAISettings
from ccproxy_gateway.openai.content import add_cache_breakpoints
from ccproxy_gateway.openai.models import NamedFunction, NamedToolChoice
from ccproxy_gateway.openai.reasoning import thinking_config

_MODES = {"none": "none", "auto": "auto", "required": "any"}

# JSON mode (``response_format`` / ``text.format``) goes through a tool Claude must call: its input is
# always a JSON object valid against the schema (words only work most of the time), and it streams
# as the answer's text. Where forcing the tool is impossible (with thinking; with the client's tools
# and tool_choice auto, when ``any`` is used) the system prompt asks for it instead.
JSON_TOOL = "json_response"
INSTRUCTION = (f"Give your final answer by calling the `{JSON_TOOL}` tool; its input is the JSON response. "
               "Do not answer in plain text.")


@dataclass(slots=True)
class Plan:
    """The Anthropic request, and what the answer's translation needs to know."""

    body: dict[str, Any]
    #: The model name the client asked for: replies report it.
    client_model: str
    stream: bool
    json_mode: bool = False


def add_turn(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Append a turn to Anthropic ``messages``; consecutive same-role turns merge into one."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": list(blocks)})


def tool_choice(choice: str | NamedFunction | NamedToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    """Anthropic's ``tool_choice`` from OpenAI's (a mode, or a function) and ``parallel_tool_calls``."""
    if isinstance(choice, NamedToolChoice):
        choice = choice.function
    out: dict[str, Any] | None = None
    if isinstance(choice, NamedFunction):
        out = {"type": "tool", "name": choice.name}
    elif choice is not None:
        out = {"type": _MODES[choice]}
    if parallel is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


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


def anthropic_body(
    model: str, system: list[dict[str, Any]], messages: list[dict[str, Any]], options: OpenAISettings, *,
    limit: tuple[int | None, str], effort: tuple[str | None, str], temperature: float | None, top_p: float | None,
    tools: list[dict[str, Any]], choice: dict[str, Any] | None, user: str | None, stream: bool,
    json_mode: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Anthropic request around the translated messages. ``limit`` and ``effort``: (value, the
    client's parameter name, for errors); ``json_mode``: the JSON tool, or None."""
    if limit[0] is not None:
        check_token_limit(limit[0], model, limit[1])
    thinking, max_tokens = thinking_config(
        effort[0], options.reasoning_budgets, limit[0], options.default_max_tokens, effort[1],
        model_limit=max_output_tokens(model),
    )
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        body["system"] = system
    # Claude takes temperature in [0, 1] and refuses temperature with top_p on current models.
    if thinking is not None:
        body["thinking"] = thinking
    elif temperature is not None:
        body["temperature"] = min(temperature, 1.0)
    elif top_p is not None:
        body["top_p"] = top_p
    if tools:
        body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice
    if user:
        body["metadata"] = {"user_id": user}
    if stream:
        body["stream"] = True
    if json_mode is not None:
        _apply_json_mode(body, json_mode, client_tools=bool(tools))
    if options.prompt_cache:
        add_cache_breakpoints(body)
    return body


def _apply_json_mode(body: dict[str, Any], tool: dict[str, Any], client_tools: bool) -> None:
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
