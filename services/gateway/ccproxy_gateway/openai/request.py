"""What the two request translations (Chat Completions, Responses) share: parsing, turns, tool
choice, and the Anthropic body around the messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ccproxy_core.errors import validation_error
from ccproxy_core.models import check_token_limit, max_output_tokens
from ccproxy_core.settings import OpenAISettings
from ccproxy_gateway.openai.content import add_cache_breakpoints
from ccproxy_gateway.openai.reasoning import thinking_config
from ccproxy_gateway.openai.structured import apply_json_mode

M = TypeVar("M", bound=BaseModel)
_MODES = {"none": "none", "auto": "auto", "required": "any"}


@dataclass(slots=True)
class Plan:
    """The Anthropic request, and what the answer's translation needs to know."""

    body: dict[str, Any]
    #: The model name the client asked for: replies report it.
    client_model: str
    stream: bool
    json_mode: bool = False


def parse_request(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


class Turns:
    """Anthropic messages built in order; consecutive same-role turns merge into one."""

    def __init__(self, skip_empty: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.skip_empty = skip_empty

    def add(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks and self.skip_empty:
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": list(blocks)})


def tool_choice(mode: str | None, name: str | None, parallel: bool | None) -> dict[str, Any] | None:
    """Anthropic's ``tool_choice`` from OpenAI's (a mode, or a function's name) and
    ``parallel_tool_calls``."""
    out: dict[str, Any] | None = {"type": "tool", "name": name} if name else {"type": _MODES[mode]} if mode else None
    if parallel is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def anthropic_body(
    model: str, limit: tuple[int | None, str], effort: tuple[str | None, str],
    options: OpenAISettings, system: list[dict[str, Any]], messages: list[dict[str, Any]],
    temperature: float | None, top_p: float | None,
) -> dict[str, Any]:
    """The body's model, token limit, thinking and sampling. ``limit`` and ``effort`` are each
    (value, the client's parameter name, for errors)."""
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
    return body


def finish_body(
    body: dict[str, Any], tools: list[dict[str, Any]], choice: dict[str, Any] | None, user: str | None,
    stream: bool, json_tool: dict[str, Any] | None, options: OpenAISettings,
) -> None:
    """Tools, caller, streaming, JSON mode (``json_tool``) and prompt caching."""
    if tools:
        body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice
    if user:
        body["metadata"] = {"user_id": user}
    if stream:
        body["stream"] = True
    if json_tool is not None:
        apply_json_mode(body, json_tool, client_tools=bool(tools))
    if options.prompt_cache:
        add_cache_breakpoints(body)
