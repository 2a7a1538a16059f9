"""Anthropic answers as OpenAI Chat Completions: a whole message, or a stream event by event
(each event's chunks at once, so a text delta reaches the client as soon as it arrives)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat import ChatCompletionMessageFunctionToolCall as ToolCall
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_message_function_tool_call import Function
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails

from ccproxy_core.errors import OPENAI_TYPE_BY_ANTHROPIC
from ccproxy_core.models import TokenUsage
from ccproxy_gateway.openai.chat_request import ChatPlan
from ccproxy_gateway.openai.content import finish_reason
from ccproxy_gateway.openai.reasoning import REASONING_MEMORY, joined_reasoning
from ccproxy_gateway.openai.stream import Block, StreamTranslator, wire


def completion_id(message_id: str | None) -> str:
    return "chatcmpl-" + (message_id or "ccproxy")


def chat_usage(tokens: TokenUsage) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=tokens.prompt_tokens,
        completion_tokens=tokens.output_tokens,
        total_tokens=tokens.total,
        prompt_tokens_details=PromptTokensDetails(  # cache_write_tokens: ccproxy's own, for billing
            cached_tokens=tokens.cache_read_tokens, cache_write_tokens=tokens.cache_write_tokens
        ),
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
        self.id = completion_id(None)
        #: Anthropic block index -> OpenAI tool call index.
        self._calls: dict[int, int] = {}
        #: Thinking blocks, as sent back (redacted ones included).
        self.reasoning: list[dict[str, Any]] = []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        # The hot path (one call per text delta): built as a dict, in the shape of OpenAI's
        # ChatCompletionChunk (the unit tests check it), at a fraction of a model's cost.
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.plan.client_model,
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
        self.id = completion_id(message.get("id"))
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
        if block.kind == "tool" and not block.parts:
            # A tool without parameters streams no arguments; OpenAI clients expect "{}".
            yield self._arguments(block, "{}")
        elif block.kind == "json" and not block.parts:
            yield self._chunk({"content": "{}"})
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
