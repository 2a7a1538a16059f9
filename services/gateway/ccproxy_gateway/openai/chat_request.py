"""An OpenAI Chat Completions request as an Anthropic Messages request. What Claude cannot honour
is refused with a 400 naming the parameter, or ignored where that cannot make an answer wrong
(docs/openai.md lists which)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import OpenAISettings
from ccproxy_gateway.openai.content import anthropic_tool, content_blocks, parse_arguments
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.models import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionMessage,
    JSONSchemaFormat,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from ccproxy_gateway.openai.reasoning import REASONING_MEMORY, clean_thinking_block
from ccproxy_gateway.openai.request import Plan, Turns, anthropic_body, json_tool, parse_request, tool_choice


@dataclass(slots=True)
class ChatPlan(Plan):
    include_usage: bool = False


def parse_chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, data)


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


def _thinking_blocks(msg: AssistantMessage, where: str) -> list[dict[str, Any]]:
    if msg.thinking_blocks:
        return [clean_thinking_block(b, f"{where}.thinking_blocks.{k}") for k, b in enumerate(msg.thinking_blocks)]
    if msg.reasoning_content:
        # Only the text came back: the signature is known if this process produced it.
        return list(REASONING_MEMORY.recall(msg.reasoning_content) or [])
    return []


def translate_messages(req: ChatCompletionRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages). System and developer messages anywhere become the system
    prompt, in order (Claude has no mid-conversation system turn)."""
    system: list[dict[str, Any]] = []
    turns = Turns()
    legacy_call_ids: list[str] = []
    for i, msg in enumerate(req.messages):
        where = f"messages.{i}"
        if isinstance(msg, SystemMessage):
            system.extend(content_blocks(msg.content, where + ".content"))
        elif isinstance(msg, UserMessage):
            turns.add("user", content_blocks(msg.content, where + ".content"))
        elif isinstance(msg, AssistantMessage):
            blocks = _thinking_blocks(msg, where)
            if msg.content is not None:
                blocks.extend(content_blocks(msg.content, where + ".content"))
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
            content = msg.content if isinstance(msg.content, str) else content_blocks(msg.content, where)
            turns.add("user", [{"type": "tool_result", "tool_use_id": msg.tool_call_id, "content": content}])
        elif isinstance(msg, FunctionMessage):
            if not legacy_call_ids:
                raise ProxyError(400, f"{where}: a function message must follow an assistant function_call",
                                 param=where)
            turns.add("user", [{"type": "tool_result", "tool_use_id": legacy_call_ids.pop(0),
                                "content": msg.content or ""}])
    return system, turns.messages


def translate_chat_request(req: ChatCompletionRequest, models: ModelMap, options: OpenAISettings) -> ChatPlan:
    _refuse_unsupported(req)
    system, messages = translate_messages(req)
    tools = [anthropic_tool(t.function.name, t.function.description, t.function.parameters) for t in req.tools or []]
    tools += [anthropic_tool(f.name, f.description, f.parameters) for f in req.functions or []]
    fmt, tool = req.response_format, None
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_schema" and fmt.json_schema is None:
            raise ProxyError(400, "response_format.json_schema: required for type json_schema",
                             param="response_format.json_schema")
        spec = (fmt.json_schema if fmt.type == "json_schema" else None) or JSONSchemaFormat(name=None)
        tool = json_tool(spec.schema_, spec.name, spec.description, "response_format.json_schema.schema")
    choice = req.tool_choice if req.tool_choice is not None else req.function_call
    limit = req.max_completion_tokens or req.max_tokens
    body = anthropic_body(
        models.resolve(req.model), system, messages, options,
        limit=(limit, "max_completion_tokens" if req.max_completion_tokens else "max_tokens"),
        effort=(req.reasoning_effort, "reasoning_effort"), temperature=req.temperature, top_p=req.top_p,
        tools=tools, choice=tool_choice(choice, req.parallel_tool_calls), user=req.user,
        stream=bool(req.stream), json_mode=tool,
    )
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if stops := [s for s in stops if s]:
        body["stop_sequences"] = stops
    return ChatPlan(
        body=body,
        client_model=req.model,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        json_mode=tool is not None,
    )
