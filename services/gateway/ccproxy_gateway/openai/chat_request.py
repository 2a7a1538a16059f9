"""An OpenAI Chat Completions request as an Anthropic Messages request.

What Claude can honour is translated; what it cannot is refused with a 400 naming the parameter
(``n`` > 1, ``logprobs``, ``logit_bias``, audio) or, where ignoring it cannot make an answer
wrong, ignored as docs/openai.md lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ccproxy_core.errors import ProxyError, validation_error
from ccproxy_core.models import check_token_limit, max_output_tokens
from ccproxy_core.settings import OpenAISettings
from ccproxy_gateway.openai.chat_models import (
    AssistantMessage,
    AudioPart,
    ChatCompletionRequest,
    FilePart,
    FunctionMessage,
    ImagePart,
    NamedFunction,
    NamedToolChoice,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from ccproxy_gateway.openai.content import (
    add_cache_breakpoints,
    anthropic_tool,
    file_block,
    image_block,
    parse_arguments,
)
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.reasoning import REASONING_MEMORY, clean_thinking_block, thinking_config
from ccproxy_gateway.openai.structured import apply_json_mode, json_tool


@dataclass(slots=True)
class ChatPlan:
    """The Anthropic request, and what the answer's translation needs to know."""

    body: dict[str, Any]
    #: The model name the client asked for: replies report it.
    client_model: str
    stream: bool
    include_usage: bool = False
    json_mode: bool = False


def parse_chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def _refuse_unsupported(req: ChatCompletionRequest) -> None:
    if req.n is not None and req.n != 1:
        raise ProxyError(400, "n: Claude returns one choice per request; n must be 1", param="n")
    if req.logprobs or req.top_logprobs:
        param = "logprobs" if req.logprobs else "top_logprobs"
        raise ProxyError(400, f"{param}: Claude does not return log probabilities", param=param)
    if req.logit_bias:
        raise ProxyError(400, "logit_bias: Claude does not support token biases", param="logit_bias")
    if req.audio is not None or (req.modalities and any(m != "text" for m in req.modalities)):
        raise ProxyError(400, "modalities: Claude answers in text only", param="modalities")


def _text(content: str | list[TextPart] | list[Any]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart) and part.text:
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, RefusalPart) and part.refusal:
            blocks.append({"type": "text", "text": part.refusal})
    return blocks


def _user_blocks(msg: UserMessage, where: str) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return _text(msg.content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(msg.content):
        at = f"{where}.content.{j}"
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(image_block(part.image_url.url, at + ".image_url.url"))
        elif isinstance(part, FilePart):
            blocks.append(file_block(part.file.file_data, part.file.file_id, at + ".file", part.file.filename))
        elif isinstance(part, AudioPart):
            raise ProxyError(400, f"{at}: Claude does not accept audio input", param=at)
    return blocks


def _thinking_blocks(msg: AssistantMessage, where: str) -> list[dict[str, Any]]:
    if msg.thinking_blocks:
        return [clean_thinking_block(b, f"{where}.thinking_blocks.{k}") for k, b in enumerate(msg.thinking_blocks)]
    if msg.reasoning_content:
        # Only the text came back: the signature is known if this process produced it.
        return list(REASONING_MEMORY.recall(msg.reasoning_content) or [])
    return []


class _Turns:
    """Anthropic messages built in order; consecutive same-role turns merge into one."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def add(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": list(blocks)})


def translate_messages(req: ChatCompletionRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages). System and developer messages anywhere become the system
    prompt, in order (Claude has no mid-conversation system turn)."""
    system: list[dict[str, Any]] = []
    turns = _Turns()
    legacy_call_ids: list[str] = []
    for i, msg in enumerate(req.messages):
        where = f"messages.{i}"
        if isinstance(msg, SystemMessage):
            system.extend(_text(msg.content))
        elif isinstance(msg, UserMessage):
            turns.add("user", _user_blocks(msg, where))
        elif isinstance(msg, AssistantMessage):
            blocks = _thinking_blocks(msg, where)
            if msg.content is not None:
                blocks.extend(_text(msg.content))
            for j, call in enumerate(msg.tool_calls or []):
                args = parse_arguments(call.function.arguments, f"{where}.tool_calls.{j}.function.arguments")
                blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": args})
            if msg.function_call is not None:
                call_id = f"call_legacy_{i}"
                legacy_call_ids.append(call_id)
                args = parse_arguments(msg.function_call.arguments, f"{where}.function_call.arguments")
                blocks.append({"type": "tool_use", "id": call_id, "name": msg.function_call.name, "input": args})
            turns.add("assistant", blocks)
        elif isinstance(msg, ToolMessage):
            content: str | list[dict[str, Any]] = (
                msg.content if isinstance(msg.content, str) else _text(msg.content)
            )
            turns.add("user", [{"type": "tool_result", "tool_use_id": msg.tool_call_id, "content": content}])
        elif isinstance(msg, FunctionMessage):
            if not legacy_call_ids:
                raise ProxyError(400, f"{where}: a function message must follow an assistant function_call",
                                 param=where)
            turns.add("user", [{"type": "tool_result", "tool_use_id": legacy_call_ids.pop(0),
                                "content": msg.content or ""}])
    return system, turns.messages


def _tool_choice(req: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None and req.function_call is not None:
        choice = req.function_call if isinstance(req.function_call, str) else NamedToolChoice(
            type="function", function=NamedFunction(name=req.function_call.name)
        )
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif isinstance(choice, NamedToolChoice):
        out = {"type": "tool", "name": choice.function.name}
    else:
        out = {"type": {"none": "none", "auto": "auto", "required": "any"}[choice]}
    if req.parallel_tool_calls is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def translate_chat_request(req: ChatCompletionRequest, models: ModelMap, options: OpenAISettings) -> ChatPlan:
    _refuse_unsupported(req)
    system, messages = translate_messages(req)
    limit = req.max_completion_tokens or req.max_tokens
    model = models.resolve(req.model)
    if limit is not None:
        check_token_limit(limit, model, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
    thinking, max_tokens = thinking_config(
        req.reasoning_effort, options.reasoning_budgets, limit, options.default_max_tokens,
        model_limit=max_output_tokens(model),
    )
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        body["system"] = system
    if thinking is not None:
        body["thinking"] = thinking
    else:
        # Claude takes temperature in [0, 1] and refuses temperature with top_p on current models.
        if req.temperature is not None:
            body["temperature"] = min(req.temperature, 1.0)
        elif req.top_p is not None:
            body["top_p"] = req.top_p
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if stops := [s for s in stops if s]:
        body["stop_sequences"] = stops
    tools = [anthropic_tool(t.function.name, t.function.description, t.function.parameters) for t in req.tools or []]
    tools += [anthropic_tool(f.name, f.description, f.parameters) for f in req.functions or []]
    if tools:
        body["tools"] = tools
        if (choice := _tool_choice(req)) is not None:
            body["tool_choice"] = choice
    if req.user:
        body["metadata"] = {"user_id": req.user}
    stream = bool(req.stream)
    if stream:
        body["stream"] = True
    plan = ChatPlan(
        body=body,
        client_model=req.model,
        stream=stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
    )
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        spec = fmt.json_schema if fmt.type == "json_schema" else None
        if fmt.type == "json_schema" and spec is None:
            raise ProxyError(400, "response_format.json_schema: required for type json_schema",
                             param="response_format.json_schema")
        tool = json_tool(
            spec.schema_ if spec else None,
            spec.name if spec else None,
            spec.description if spec else None,
            "response_format.json_schema.schema",
        )
        apply_json_mode(body, tool, client_tools=bool(tools))
        plan.json_mode = True
    if options.prompt_cache:
        add_cache_breakpoints(body)
    return plan
