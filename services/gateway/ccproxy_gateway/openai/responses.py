"""The OpenAI Responses API over Anthropic Messages: request, whole answer, and stream (created,
in_progress, each output item added, its deltas and done events, then completed/incomplete with the
whole response). ``previous_response_id`` and ``item_reference`` are filled in by the response store
before translation; without one they are a 400."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputRefusal,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseUsage,
)
from openai.types.responses.response_reasoning_item import Summary
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from ccproxy_core.errors import OPENAI_TYPE_BY_ANTHROPIC, ProxyError
from ccproxy_core.models import TokenUsage
from ccproxy_core.settings import OpenAISettings
from ccproxy_core.sse import encode_event
from ccproxy_gateway.openai.content import anthropic_tool, content_blocks, tool_result, tool_use
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.models import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputMessage,
    ItemReference,
    ReasoningItem,
    ResponsesRequest,
)
from ccproxy_gateway.openai.reasoning import decode_reasoning, encode_reasoning
from ccproxy_gateway.openai.request import Plan, add_turn, anthropic_body, json_tool, tool_choice
from ccproxy_gateway.openai.stream import Block, OpenAIFormat, StreamTranslator, wire

#: An output item as sent (built through the ``openai`` package's own types).
Item = dict[str, Any]

NO_STORE = ("no response store here: send the whole conversation in `input` (with store: false) "
            "instead of referring to an earlier response")


@dataclass(slots=True)
class ResponsesPlan(Plan):
    #: Request fields the response object repeats back.
    echo: dict[str, Any] = field(default_factory=dict)


def _refuse_unsupported(req: ResponsesRequest) -> None:
    if req.previous_response_id:
        raise ProxyError(400, f"previous_response_id: {NO_STORE}", param="previous_response_id")
    if req.conversation is not None:
        raise ProxyError(400, f"conversation: {NO_STORE}", param="conversation")
    if req.background:
        raise ProxyError(400, "background: background responses need a response store, which ccproxy has not",
                         param="background")
    if req.top_logprobs:
        raise ProxyError(400, "top_logprobs: Claude does not return log probabilities", param="top_logprobs")


def translate_input(req: ResponsesRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) from ``instructions`` and ``input``, order kept."""
    system: list[dict[str, Any]] = []
    if req.instructions:
        system.append({"type": "text", "text": req.instructions})
    messages: list[dict[str, Any]] = []
    items = [InputMessage(role="user", content=req.input)] if isinstance(req.input, str) else req.input
    for i, item in enumerate(items):
        where = f"input.{i}"
        if isinstance(item, InputMessage):
            blocks = content_blocks(item.content, where + ".content")
            if item.role in ("system", "developer"):
                if any(b["type"] != "text" for b in blocks):
                    raise ProxyError(400, f"{where}: system and developer messages take text only", param=where)
                system.extend(blocks)
            elif blocks:
                add_turn(messages, item.role, blocks)
        elif isinstance(item, FunctionCallItem):
            add_turn(messages, "assistant", [tool_use(item.call_id, item.name, item.arguments, where + ".arguments")])
        elif isinstance(item, FunctionCallOutputItem):
            add_turn(messages, "user", [tool_result(item.call_id, item.output, where + ".output")])
        elif isinstance(item, ReasoningItem):
            block = decode_reasoning(item.encrypted_content)
            if block is not None:
                add_turn(messages, "assistant", [block])
        elif isinstance(item, ItemReference):
            raise ProxyError(400, f"{where}: item_reference: {NO_STORE}", param=where)
    return system, messages


def translate_responses_request(req: ResponsesRequest, models: ModelMap, options: OpenAISettings) -> ResponsesPlan:
    _refuse_unsupported(req)
    system, messages = translate_input(req)
    # Hosted tools (web search, file search, computer use ...) have no Claude counterpart here.
    tools = [anthropic_tool(t.name, t.description, t.parameters) for t in req.tools or [] if t.type == "function"
             and t.name]
    fmt, tool = req.text.format if req.text else None, None
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_schema" and fmt.schema_ is None:
            raise ProxyError(400, "text.format.schema: required for type json_schema", param="text.format.schema")
        tool = json_tool(fmt.schema_, fmt.name, fmt.description, "text.format.schema")
    choice = req.tool_choice if tools else None
    if isinstance(choice, dict):
        raise ProxyError(400, f"tool_choice: type {choice.get('type')!r} is not supported; use none, auto, required "
                         "or a function", param="tool_choice")
    body = anthropic_body(
        models.resolve(req.model), system, messages, options, limit=(req.max_output_tokens, "max_output_tokens"),
        effort=(req.reasoning.effort if req.reasoning else None, "reasoning.effort"), temperature=req.temperature,
        top_p=req.top_p, tools=tools, choice=tool_choice(choice, req.parallel_tool_calls), stream=bool(req.stream),
        user=req.user or req.safety_identifier, json_mode=tool,
    )
    # What the response repeats of the request, as OpenAI writes it (its defaults where not sent).
    sent = req.model_dump(include={"tool_choice", "tools", "reasoning", "text", "metadata"}, exclude_none=True,
                          by_alias=True)
    echo = {
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls is not False, "temperature": req.temperature,
        "top_p": req.top_p, "tool_choice": "auto", "tools": [], "reasoning": {}, "text": {"format": {"type": "text"}},
        "metadata": {}, "store": False, "user": req.user, **sent,
    }
    return ResponsesPlan(body, req.model, bool(req.stream), json_mode=tool is not None, echo=echo)


#: Anthropic stop reasons that leave a response incomplete, and why in OpenAI's words.
_INCOMPLETE = {"max_tokens": "max_output_tokens", "model_context_window_exceeded": "max_output_tokens",
               "refusal": "content_filter"}


def _usage(tokens: TokenUsage) -> Item:
    return wire(ResponseUsage(  # cache_write_tokens: ccproxy's own, for billing
        input_tokens=tokens.prompt_tokens, output_tokens=tokens.output_tokens, total_tokens=tokens.total,
        input_tokens_details=InputTokensDetails(
            cached_tokens=tokens.cache_read_tokens, cache_write_tokens=tokens.cache_write_tokens),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
    ))


def _text_part(text: str) -> ResponseOutputText:
    return ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])


def _summary(text: str) -> Summary:
    return Summary(type="summary_text", text=text)


def _reasoning_item(item_id: str, block: dict[str, Any] | None = None) -> Item:
    """A reasoning item: opened (no block yet), or done, its block in ``encrypted_content``."""
    if block is None:
        return wire(ResponseReasoningItem(type="reasoning", id=item_id, summary=[]))
    summary = [_summary(block["thinking"])] if block.get("thinking") else []
    return wire(ResponseReasoningItem(type="reasoning", id=item_id, summary=summary,
                                      encrypted_content=encode_reasoning(block)))


def response_object(message: dict[str, Any], plan: ResponsesPlan, created: int | None = None) -> Item:
    """A whole Anthropic message as a ``response`` object."""
    translator = ResponsesStreamTranslator(plan, created)
    translator.take_whole(message)
    assert translator.response is not None  # take_whole ends the message
    return translator.response


#: Which part an item's text events name: its summary's first, or its content's first.
_PART_INDEX = {"thinking": {"summary_index": 0}, "text": {"content_index": 0}, "json": {"content_index": 0}}


class ResponsesStreamTranslator(StreamTranslator[tuple[str, dict[str, Any]]]):
    """Anthropic stream events in, Responses API events out (``(type, body)`` pairs)."""

    ended_early = "the upstream stream ended before the response was complete"

    def __init__(self, plan: ResponsesPlan, created: int | None = None) -> None:
        super().__init__(plan.json_mode, created)
        self.plan = plan
        self.base = "ccproxy"
        self.output: list[Item] = []
        #: The finished response (completed or incomplete), once ``finish`` made it.
        self.response: dict[str, Any] | None = None
        self._seq = 0

    def frame(self, out: tuple[str, dict[str, Any]]) -> bytes:
        return encode_event(out[0], orjson.dumps(out[1]))

    def _event(self, kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        body = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return kind, body

    def _on(self, kind: str, block: Block, **fields: Any) -> tuple[str, dict[str, Any]]:
        """An event about one output item; its text events also name the part (its first)."""
        where = _PART_INDEX.get(block.kind, {})
        return self._event(kind, item_id=self._item_id(block), output_index=block.position, **where, **fields)

    def _item_id(self, block: Block) -> str:
        if block.kind == "tool":
            return f"fc_{block.call_id}"
        return f"{'rs' if block.kind == 'thinking' else 'msg'}_{self.base}_{block.index}"

    def _response(self, status: str, **fields: Any) -> Item:
        """A ``response`` object; strict clients expect its ``null`` fields to be there."""
        return {
            "id": f"resp_{self.base}", "object": "response", "created_at": self.created, "status": status,
            "model": self.plan.client_model, "output": [], "usage": None, "error": None, "incomplete_details": None,
            "previous_response_id": None, "truncation": "disabled", **self.plan.echo, **fields,
        }

    def _placed(self, position: int, item: Item, done: bool) -> tuple[str, dict[str, Any]]:
        """``response.output_item.added``, or ``.done`` (the item then joins the output)."""
        if done:
            self.output.append(item)
        return self._event(f"response.output_item.{'done' if done else 'added'}", output_index=position, item=item)

    def _item(self, block: Block, done: bool) -> tuple[str, dict[str, Any]]:
        """A block's output item as it stands: opened, or done."""
        item_id = self._item_id(block)
        status: Literal["completed", "in_progress"] = "completed" if done else "in_progress"
        if block.kind == "tool":
            item = wire(ResponseFunctionToolCall(type="function_call", id=item_id, call_id=block.call_id,
                                                 name=block.name, arguments=block.text, status=status))
        elif block.kind == "thinking":
            thinking = {"type": "thinking", "thinking": block.text, "signature": block.signature}
            item = _reasoning_item(item_id, thinking if done else None)
        else:
            content: list[ResponseOutputText | ResponseOutputRefusal] = [_text_part(block.text)] if done else []
            item = wire(ResponseOutputMessage(type="message", id=item_id, status=status, role="assistant",
                                              content=content))
        return self._placed(block.position, item, done)

    def started(self, message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        # Unique either way: a stored response is found by its id, its items by theirs.
        self.base = (message.get("id") or uuid.uuid4().hex).removeprefix("msg_")
        yield self._event("response.created", response=self._response("in_progress"))
        yield self._event("response.in_progress", response=self._response("in_progress"))

    def opened(self, block: Block) -> Iterator[tuple[str, dict[str, Any]]]:
        yield self._item(block, done=False)
        if block.kind == "thinking":
            yield self._on("response.reasoning_summary_part.added", block, part=wire(_summary("")))
        elif block.kind != "tool":
            yield self._on("response.content_part.added", block, part=wire(_text_part("")))

    def added(self, block: Block, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if block.kind == "tool":
            yield self._on("response.function_call_arguments.delta", block, delta=text)
        elif block.kind == "thinking":
            yield self._on("response.reasoning_summary_text.delta", block, delta=text)
        else:
            yield self._on("response.output_text.delta", block, delta=text, logprobs=[])

    def closed(self, block: Block) -> Iterator[tuple[str, dict[str, Any]]]:
        if block.kind in ("tool", "json") and not block.parts:
            block.parts.append("{}")  # no input streamed: an empty object, as OpenAI clients expect
            if block.kind == "json":
                yield from self.added(block, "{}")
        text = block.text
        if block.kind == "tool":
            yield self._on("response.function_call_arguments.done", block, name=block.name, arguments=text)
        elif block.kind == "thinking":
            yield self._on("response.reasoning_summary_text.done", block, text=text)
            yield self._on("response.reasoning_summary_part.done", block, part=wire(_summary(text)))
        else:
            yield self._on("response.output_text.done", block, text=text, logprobs=[])
            yield self._on("response.content_part.done", block, part=wire(_text_part(text)))
        yield self._item(block, done=True)

    def redacted(self, index: int, position: int, block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        item_id = f"rs_{self.base}_{index}"
        yield self._placed(position, _reasoning_item(item_id), False)
        yield self._placed(position, _reasoning_item(item_id, block), True)

    def ended(self) -> Iterator[tuple[str, dict[str, Any]]]:
        reason = _INCOMPLETE.get(self.usage.stop_reason or "")
        status = "incomplete" if reason else "completed"
        self.response = self._response(status, output=self.output, usage=_usage(self.usage.tokens),
                                       incomplete_details={"reason": reason} if reason else None)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        yield self._event(kind, response=self.response)

    def failure(self, error_type: str, message: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """OpenAI's two failure events: ``error``, then ``response.failed`` with the response."""
        code = OPENAI_TYPE_BY_ANTHROPIC.get(error_type, error_type)
        yield self._event("error", code=code, message=message, param=None)
        response = self._response("failed", output=self.output, usage=_usage(self.usage.tokens),
                                  error={"code": code, "message": message})
        yield self._event("response.failed", response=response)


RESPONSES = OpenAIFormat(True, ResponsesRequest, translate_responses_request, response_object,
                         ResponsesStreamTranslator)
