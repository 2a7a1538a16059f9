"""OpenAI Chat Completions over Anthropic Messages. The request: what Claude cannot honour is refused
with a 400 naming the parameter, or ignored where that cannot make an answer wrong (docs/openai.md
lists which). The answer: a whole message, or a stream event by event (each event's chunks at once,
so a text delta reaches the client as soon as it arrives)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat import ChatCompletionMessageFunctionToolCall as ToolCall
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_message_function_tool_call import Function
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails

from ccproxy_core.errors import OPENAI_TYPE_BY_ANTHROPIC, ProxyError
from ccproxy_core.models import TokenUsage
from ccproxy_core.settings import OpenAISettings
from ccproxy_gateway.openai.content import anthropic_tool, content_blocks, finish_reason, tool_result, tool_use
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
from ccproxy_gateway.openai.reasoning import REASONING_MEMORY, clean_thinking_block, joined_reasoning
from ccproxy_gateway.openai.request import Plan, add_turn, anthropic_body, json_tool, tool_choice
from ccproxy_gateway.openai.stream import Block, OpenAIFormat, StreamTranslator, wire


@dataclass(slots=True)
class ChatPlan(Plan):
    include_usage: bool = False


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
    messages: list[dict[str, Any]] = []
    legacy_call_ids: list[str] = []
    for i, msg in enumerate(req.messages):
        where = f"messages.{i}"
        if isinstance(msg, SystemMessage):
            system.extend(content_blocks(msg.content, where + ".content"))
        elif isinstance(msg, UserMessage):
            add_turn(messages, "user", content_blocks(msg.content, where + ".content"))
        elif isinstance(msg, AssistantMessage):
            blocks = _thinking_blocks(msg, where)
            if msg.content is not None:
                blocks.extend(content_blocks(msg.content, where + ".content"))
            for j, call in enumerate(msg.tool_calls or []):
                fn = call.function
                blocks.append(tool_use(call.id, fn.name, fn.arguments, f"{where}.tool_calls.{j}.function.arguments"))
            if (legacy := msg.function_call) is not None:
                legacy_call_ids.append(f"call_legacy_{i}")
                arguments = f"{where}.function_call.arguments"
                blocks.append(tool_use(legacy_call_ids[-1], legacy.name, legacy.arguments, arguments))
            add_turn(messages, "assistant", blocks)
        elif isinstance(msg, ToolMessage):
            add_turn(messages, "user", [tool_result(msg.tool_call_id, msg.content, where)])
        elif isinstance(msg, FunctionMessage):
            if not legacy_call_ids:
                raise ProxyError(400, f"{where}: a function message must follow an assistant function_call",
                                 param=where)
            add_turn(messages, "user", [tool_result(legacy_call_ids.pop(0), msg.content or "", where)])
    return system, messages


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
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return ChatPlan(body, req.model, bool(req.stream), json_mode=tool is not None, include_usage=include_usage)


def chat_usage(tokens: TokenUsage) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=tokens.prompt_tokens, completion_tokens=tokens.output_tokens, total_tokens=tokens.total,
        prompt_tokens_details=PromptTokensDetails(  # cache_write_tokens: ccproxy's own, for billing
            cached_tokens=tokens.cache_read_tokens, cache_write_tokens=tokens.cache_write_tokens),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0),
    )


def chat_completion(message: dict[str, Any], plan: ChatPlan, created: int | None = None) -> dict[str, Any]:
    """A whole Anthropic message as a ``chat.completion`` body."""
    translator = ChatStreamTranslator(plan, created)
    translator.take_whole(message)
    texts = [block.text for block in translator.done if block.kind in ("text", "json")]
    calls = [ToolCall(id=block.call_id, type="function", function=Function(name=block.name, arguments=block.text))
             for block in translator.done if block.kind == "tool"]
    extra: dict[str, Any] = {"tool_calls": calls} if calls else {}
    if thinking := translator.reasoning:
        # ccproxy's thinking round trip (reasoning.py): fields of its own, beside OpenAI's.
        extra.update(reasoning_content=joined_reasoning(thinking), thinking_blocks=thinking)
    out = ChatCompletionMessage(role="assistant", content="".join(texts) if texts else None, **extra)
    choice = Choice(index=0, message=out, finish_reason=translator.finish_reason(), logprobs=None)  # type: ignore[arg-type]
    return wire(ChatCompletion(id=translator.id, object="chat.completion", created=translator.created,
                               model=plan.client_model, choices=[choice], usage=chat_usage(translator.usage.tokens)))


class ChatStreamTranslator(StreamTranslator[dict[str, Any]]):
    """Anthropic stream events in, ``chat.completion.chunk`` bodies out. A failure ends the stream
    with an OpenAI error body and no ``[DONE]`` (the answer is incomplete: the OpenAI SDK raises)."""

    ended_early = "the upstream stream ended before the message was complete"
    end = b"data: [DONE]\n\n"

    def __init__(self, plan: ChatPlan, created: int | None = None) -> None:
        super().__init__(plan.json_mode, created)
        self.plan = plan
        self.id = "chatcmpl-ccproxy"
        #: Anthropic block index -> OpenAI tool call index.
        self._calls: dict[int, int] = {}
        #: Thinking blocks, as sent back (redacted ones included).
        self.reasoning: list[dict[str, Any]] = []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        # The hot path (one call per text delta): built as a dict, in the shape of OpenAI's
        # ChatCompletionChunk (the unit tests check it), at a fraction of a model's cost.
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.plan.client_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def _arguments(self, block: Block, arguments: str) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": self._calls[block.index], "function": {"arguments": arguments}}]})

    def _thinking(self, block: dict[str, Any]) -> dict[str, Any]:
        self.reasoning.append(block)
        return self._chunk({"thinking_blocks": [block]})

    def frame(self, out: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(out) + b"\n\n"

    def started(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.id = "chatcmpl-" + (message.get("id") or "ccproxy")
        yield self._chunk({"role": "assistant", "content": ""})

    def opened(self, block: Block) -> Iterator[dict[str, Any]]:
        if block.kind == "tool":
            call = self._calls[block.index] = len(self._calls)
            function = {"name": block.name, "arguments": ""}
            yield self._chunk({"tool_calls": [{"index": call, "id": block.call_id, "type": "function",
                                               "function": function}]})
        elif block.kind == "thinking" and any(b["type"] == "thinking" for b in self.reasoning):
            yield self._chunk({"reasoning_content": "\n\n"})  # as joined_reasoning() does

    def added(self, block: Block, text: str) -> Iterator[dict[str, Any]]:
        if block.kind == "tool":
            yield self._arguments(block, text)
        elif block.kind == "thinking":
            yield self._chunk({"reasoning_content": text})
        else:
            yield self._chunk({"content": text})

    def closed(self, block: Block) -> Iterator[dict[str, Any]]:
        if block.kind in ("tool", "json") and not block.parts:
            yield from self.added(block, "{}")  # no input streamed: OpenAI clients expect "{}"
        elif block.kind == "thinking":
            yield self._thinking({"type": "thinking", "thinking": block.text, "signature": block.signature})

    def redacted(self, index: int, position: int, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield self._thinking(block)

    def ended(self) -> Iterator[dict[str, Any]]:
        if self.reasoning:
            REASONING_MEMORY.remember(joined_reasoning(self.reasoning), self.reasoning)
        yield self._chunk({}, finish=self.finish_reason())
        if self.plan.include_usage:
            yield wire(ChatCompletionChunk(
                id=self.id, object="chat.completion.chunk", created=self.created, model=self.plan.client_model,
                choices=[], usage=chat_usage(self.usage.tokens),
            ))

    def finish_reason(self) -> str:
        """OpenAI's; an answer given through the JSON tool simply stopped."""
        return "stop" if self.answered_json and not self._calls else finish_reason(self.usage.stop_reason)

    def failure(self, error_type: str, message: str) -> Iterator[dict[str, Any]]:
        # An error body mid-stream: the OpenAI SDK raises on it.
        openai_type = OPENAI_TYPE_BY_ANTHROPIC.get(error_type, error_type)
        yield {"error": {"message": message, "type": openai_type, "param": None, "code": error_type}}


CHAT = OpenAIFormat(False, ChatCompletionRequest, translate_chat_request, chat_completion, ChatStreamTranslator)
