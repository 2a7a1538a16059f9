"""The OpenAI Responses API over Anthropic Messages: request, whole answer, and stream.

The translation sees the whole conversation in ``input``: ``previous_response_id`` and
``item_reference`` are filled in from the response store (ccproxy_gateway.response_store) before
it; where there is none, they are refused with a 400 that says so, as is ``conversation``.

Streaming follows OpenAI's event sequence: ``response.created``, ``response.in_progress``, then
per output item ``response.output_item.added``, its deltas (``response.output_text.delta``,
``response.function_call_arguments.delta``, ``response.reasoning_summary_text.delta``), its
``.done`` events and ``response.output_item.done``; then ``response.completed`` (or
``response.incomplete``) with the full response and usage, as the protocol requires.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
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
from pydantic import BaseModel

from ccproxy_core.errors import OPENAI_TYPE_BY_ANTHROPIC, ProxyError
from ccproxy_core.models import TokenUsage
from ccproxy_core.settings import OpenAISettings
from ccproxy_core.sse import ServerSentEvent, encode_event
from ccproxy_gateway.openai.content import answer_parts, anthropic_tool, file_block, image_block, parse_arguments
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.reasoning import decode_reasoning, encode_reasoning
from ccproxy_gateway.openai.request import Plan, Turns, anthropic_body, finish_body, parse_request, tool_choice
from ccproxy_gateway.openai.responses_models import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputFile,
    InputImage,
    InputMessage,
    InputRefusal,
    InputText,
    ItemReference,
    ReasoningItem,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
)
from ccproxy_gateway.openai.stream import StreamTranslator, translate_stream
from ccproxy_gateway.openai.structured import JSON_TOOL, json_tool

#: An output item as sent (built through the ``openai`` package's own types).
Item = dict[str, Any]
Status = Literal["in_progress", "completed", "incomplete"]

NO_STORE = (
    "no response store here: send the whole conversation in `input` (with store: false) "
    "instead of referring to an earlier response"
)


@dataclass(slots=True)
class ResponsesPlan(Plan):
    #: Request fields the response object repeats back.
    echo: dict[str, Any] = field(default_factory=dict)


def parse_responses_request(data: dict[str, Any]) -> ResponsesRequest:
    return parse_request(ResponsesRequest, data)


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


def _part_blocks(parts: str | list[Any], where: str) -> list[dict[str, Any]]:
    if isinstance(parts, str):
        return [{"type": "text", "text": parts}] if parts else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        at = f"{where}.{j}"
        if isinstance(part, InputText):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, InputRefusal):
            if part.refusal:
                blocks.append({"type": "text", "text": part.refusal})
        elif isinstance(part, InputImage):
            if not part.image_url:
                raise ProxyError(400, f"{at}: file ids are not supported; send image_url", param=at)
            blocks.append(image_block(part.image_url, at + ".image_url"))
        elif isinstance(part, InputFile):
            blocks.append(file_block(part.file_data, part.file_id or part.file_url, at, part.filename))
    return blocks


def _tool_output(output: str | list[Any], where: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(output):
        if part.type in ("input_text", "output_text", "text") and part.text:
            blocks.append({"type": "text", "text": part.text})
        elif part.type == "input_image" and part.image_url:
            blocks.append(image_block(part.image_url, f"{where}.{j}.image_url"))
    return blocks


def translate_input(req: ResponsesRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) from ``instructions`` and ``input``, order kept."""
    system: list[dict[str, Any]] = []
    if req.instructions:
        system.append({"type": "text", "text": req.instructions})
    turns = Turns(skip_empty=True)
    items = [InputMessage(role="user", content=req.input)] if isinstance(req.input, str) else req.input
    for i, item in enumerate(items):
        where = f"input.{i}"
        if isinstance(item, InputMessage):
            blocks = _part_blocks(item.content, where + ".content")
            if item.role in ("system", "developer"):
                if any(b["type"] != "text" for b in blocks):
                    raise ProxyError(400, f"{where}: system and developer messages take text only", param=where)
                system.extend(blocks)
            else:
                turns.add(item.role, blocks)
        elif isinstance(item, FunctionCallItem):
            args = parse_arguments(item.arguments, where + ".arguments")
            turns.add("assistant", [{"type": "tool_use", "id": item.call_id, "name": item.name, "input": args}])
        elif isinstance(item, FunctionCallOutputItem):
            content = _tool_output(item.output, where + ".output")
            turns.add("user", [{"type": "tool_result", "tool_use_id": item.call_id, "content": content}])
        elif isinstance(item, ReasoningItem):
            block = decode_reasoning(item.encrypted_content)
            if block is not None:
                turns.add("assistant", [block])
        elif isinstance(item, ItemReference):
            raise ProxyError(400, f"{where}: item_reference: {NO_STORE}", param=where)
    return system, turns.messages


def _tool_choice(req: ResponsesRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    if isinstance(choice, dict):
        raise ProxyError(
            400, f"tool_choice: type {choice.get('type')!r} is not supported; use none, auto, required "
            "or a function", param="tool_choice",
        )
    if isinstance(choice, FunctionToolChoice):
        return tool_choice(None, choice.name, req.parallel_tool_calls)
    return tool_choice(choice, None, req.parallel_tool_calls)


def translate_responses_request(req: ResponsesRequest, models: ModelMap, options: OpenAISettings) -> ResponsesPlan:
    _refuse_unsupported(req)
    system, messages = translate_input(req)
    body = anthropic_body(
        models.resolve(req.model), (req.max_output_tokens, "max_output_tokens"),
        (req.reasoning.effort if req.reasoning else None, "reasoning.effort"), options, system, messages,
        req.temperature, req.top_p,
    )
    # Hosted tools (web search, file search, computer use ...) have no Claude counterpart here.
    tools = [anthropic_tool(t.name, t.description, t.parameters) for t in req.tools or [] if t.type == "function"
             and t.name]
    fmt, tool = req.text.format if req.text else None, None
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_schema" and fmt.schema_ is None:
            raise ProxyError(400, "text.format.schema: required for type json_schema", param="text.format.schema")
        tool = json_tool(fmt.schema_, fmt.name, fmt.description, "text.format.schema")
    stream = bool(req.stream)
    finish_body(body, tools, _tool_choice(req) if tools else None, req.user or req.safety_identifier, stream, tool,
                options)
    plan = ResponsesPlan(body=body, client_model=req.model, stream=stream, json_mode=tool is not None)
    plan.echo = {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "reasoning": req.reasoning.model_dump(exclude_none=True) if req.reasoning else {},
        "text": req.text.model_dump(exclude_none=True, by_alias=True) if req.text else {"format": {"type": "text"}},
        "metadata": req.metadata or {},
        "store": False,
        "user": req.user,
    }
    return plan


# --- answers -------------------------------------------------------------------------------------


def _usage(tokens: TokenUsage) -> Item:
    return _wire(ResponseUsage(  # cache_write_tokens: ccproxy's own, for billing
        input_tokens=tokens.prompt_tokens,
        input_tokens_details=InputTokensDetails(
            cached_tokens=tokens.cache_read_tokens, cache_write_tokens=tokens.cache_write_tokens
        ),
        output_tokens=tokens.output_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=tokens.total,
    ))


def _status(stop_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    if stop_reason in ("max_tokens", "model_context_window_exceeded"):
        return "incomplete", {"reason": "max_output_tokens"}
    if stop_reason == "refusal":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _base_id(message_id: str | None) -> str:
    # Unique either way: a stored response is found by its id, its items by theirs.
    return (message_id or uuid.uuid4().hex).removeprefix("msg_")


def _wire(model: BaseModel) -> Item:
    """An ``openai`` type as sent: the fields set (so no ``null`` OpenAI would not write)."""
    return model.model_dump(exclude_unset=True)


def _text_part(text: str) -> ResponseOutputText:
    return ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])


def _message(item_id: str, status: Status, text: str | None = None) -> Item:
    content: list[ResponseOutputText | ResponseOutputRefusal] = [] if text is None else [_text_part(text)]
    return _wire(ResponseOutputMessage(type="message", id=item_id, status=status, role="assistant", content=content))


def _call(item_id: str, call_id: str, name: str, arguments: str, status: Status) -> Item:
    return _wire(ResponseFunctionToolCall(type="function_call", id=item_id, call_id=call_id, name=name,
                                          arguments=arguments, status=status))


def _summary(text: str) -> Summary:
    return Summary(type="summary_text", text=text)


def _reasoning_item(item_id: str, block: dict[str, Any] | None = None) -> Item:
    """A reasoning item: opened (no block yet), or done, its block in ``encrypted_content``."""
    if block is None:
        return _wire(ResponseReasoningItem(type="reasoning", id=item_id, summary=[]))
    summary = [_summary(block["thinking"])] if block.get("thinking") else []
    return _wire(ResponseReasoningItem(type="reasoning", id=item_id, summary=summary,
                                       encrypted_content=encode_reasoning(block)))


def _response(plan: ResponsesPlan, base: str, created: int, status: str, **fields: Any) -> ResponseObject:
    return ResponseObject(
        id=f"resp_{base}", created_at=created, status=status, model=plan.client_model, **plan.echo, **fields
    )


def response_object(message: dict[str, Any], plan: ResponsesPlan, created: int | None = None) -> dict[str, Any]:
    """A whole Anthropic message as a ``response`` object."""
    base = _base_id(message.get("id"))
    output: list[Item] = []
    for n, kind, value in answer_parts(message, plan.json_mode):
        if kind in ("text", "json"):
            output.append(_message(f"msg_{base}_{n}", "completed", value))
        elif kind == "call":
            output.append(_call(f"fc_{value['id']}", value["id"], value["name"],
                                orjson.dumps(value.get("input", {})).decode(), "completed"))
        else:
            output.append(_reasoning_item(f"rs_{base}_{n}", value))
    tokens = TokenUsage()
    tokens.add(message.get("usage"))
    status, incomplete = _status(message.get("stop_reason"))
    return _response(plan, base, created or int(time.time()), status, output=output, usage=_usage(tokens),
                     incomplete_details=incomplete).dump()


@dataclass(slots=True)
class _OpenItem:
    output_index: int
    kind: str  # "text" | "json" | "tool" | "thinking"
    item_id: str
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    signature: str = ""


class ResponsesStreamTranslator(StreamTranslator[tuple[str, dict[str, Any]]]):
    """Anthropic stream events in, Responses API events out (``(type, body)`` pairs)."""

    def __init__(self, plan: ResponsesPlan, created: int | None = None) -> None:
        super().__init__(created)
        self.plan = plan
        self.base = "ccproxy"
        self.output: list[Item] = []
        #: The finished response (completed or incomplete), once ``finish`` made it.
        self.response: dict[str, Any] | None = None
        self._seq = 0
        self._open: dict[int, _OpenItem] = {}
        self._next_output = 0
        #: JSON mode: text held until it is clear whether the JSON tool follows (then the text is
        #: not the answer and is dropped) or not (then it becomes a message at the end).
        self._held: list[str] = []
        self._held_index: int | None = None
        self._answered_json = False

    def _event(self, kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        body = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return kind, body

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return _response(self.plan, self.base, self.created, status, **fields).dump()

    def _message_start(self, message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        self.base = _base_id(message.get("id"))
        yield self._event("response.created", response=self._response("in_progress"))
        yield self._event("response.in_progress", response=self._response("in_progress"))

    def _open_item(self, index: int, kind: str, item_id: str, **extra: Any) -> _OpenItem:
        item = _OpenItem(output_index=self._next_output, kind=kind, item_id=item_id, **extra)
        self._next_output += 1
        self._open[index] = item
        return item

    def _open_message(self, index: int, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        item = self._open_item(index, kind, f"msg_{self.base}_{index}")
        message = _message(item.item_id, "in_progress")
        yield self._event("response.output_item.added", output_index=item.output_index, item=message)
        yield self._event("response.content_part.added", item_id=item.item_id, output_index=item.output_index,
                          content_index=0, part=_wire(_text_part("")))

    def _start(self, index: int, block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        kind = block.get("type")
        json_tool = kind == "tool_use" and self.plan.json_mode and block.get("name") == JSON_TOOL
        if kind == "text" and self.plan.json_mode:
            if not self._answered_json:
                self._held.append(block.get("text") or "")
                self._held_index = index if self._held_index is None else self._held_index
        elif kind == "text" or json_tool:
            if json_tool:
                self._answered_json = True
                self._held.clear()
            yield from self._open_message(index, "text" if kind == "text" else "json")
            if block.get("text"):
                yield from self._text(self._open[index], block["text"])
        elif kind == "tool_use":
            item = self._open_item(index, "tool", f"fc_{block.get('id')}", call_id=block.get("id", ""),
                                   name=block.get("name", ""))
            call = _call(item.item_id, item.call_id, item.name, "", "in_progress")
            yield self._event("response.output_item.added", output_index=item.output_index, item=call)
        elif kind == "thinking":
            item = self._open_item(index, "thinking", f"rs_{self.base}_{index}",
                                   signature=block.get("signature") or "")
            yield self._event("response.output_item.added", output_index=item.output_index,
                              item=_reasoning_item(item.item_id))
            yield self._event("response.reasoning_summary_part.added", item_id=item.item_id,
                              output_index=item.output_index, summary_index=0, part=_wire(_summary("")))
            if block.get("thinking"):
                yield from self._summary(item, block["thinking"])
        elif kind == "redacted_thinking":
            done = _reasoning_item(f"rs_{self.base}_{index}", {"type": "redacted_thinking",
                                                                "data": block.get("data", "")})
            output_index = self._next_output
            self._next_output += 1
            yield self._event("response.output_item.added", output_index=output_index,
                              item=_reasoning_item(done["id"]))
            self.output.append(done)
            yield self._event("response.output_item.done", output_index=output_index, item=done)

    def _text(self, item: _OpenItem, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
        item.text.append(text)
        yield self._event("response.output_text.delta", item_id=item.item_id, output_index=item.output_index,
                          content_index=0, delta=text, logprobs=[])

    def _summary(self, item: _OpenItem, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
        item.text.append(text)
        yield self._event("response.reasoning_summary_text.delta", item_id=item.item_id,
                          output_index=item.output_index, summary_index=0, delta=text)

    def _delta(self, index: int, delta: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        item = self._open.get(index)
        dtype = delta.get("type")
        if item is None:
            if dtype == "text_delta" and self.plan.json_mode and not self._answered_json and delta.get("text"):
                self._held.append(delta["text"])
            return
        if dtype == "text_delta" and item.kind == "text" and delta.get("text"):
            yield from self._text(item, delta["text"])
        elif dtype == "input_json_delta" and delta.get("partial_json"):
            if item.kind == "json":
                yield from self._text(item, delta["partial_json"])
            elif item.kind == "tool":
                item.text.append(delta["partial_json"])
                yield self._event("response.function_call_arguments.delta", item_id=item.item_id,
                                  output_index=item.output_index, delta=delta["partial_json"])
        elif dtype == "thinking_delta" and item.kind == "thinking" and delta.get("thinking"):
            yield from self._summary(item, delta["thinking"])
        elif dtype == "signature_delta" and item.kind == "thinking":
            item.signature += delta.get("signature", "")

    def _stop(self, index: int) -> Iterator[tuple[str, dict[str, Any]]]:
        item = self._open.pop(index, None)
        if item is None:
            return
        text = "".join(item.text)
        if item.kind in ("text", "json"):
            if item.kind == "json" and not text:
                yield from self._text(item, "{}")
                text = "{}"
            part = _wire(_text_part(text))
            yield self._event("response.output_text.done", item_id=item.item_id, output_index=item.output_index,
                              content_index=0, text=text, logprobs=[])
            yield self._event("response.content_part.done", item_id=item.item_id, output_index=item.output_index,
                              content_index=0, part=part)
            done = _message(item.item_id, "completed", text)
        elif item.kind == "tool":
            arguments = text or "{}"
            yield self._event("response.function_call_arguments.done", item_id=item.item_id,
                              output_index=item.output_index, name=item.name, arguments=arguments)
            done = _call(item.item_id, item.call_id, item.name, arguments, "completed")
        else:
            yield self._event("response.reasoning_summary_text.done", item_id=item.item_id,
                              output_index=item.output_index, summary_index=0, text=text)
            yield self._event("response.reasoning_summary_part.done", item_id=item.item_id,
                              output_index=item.output_index, summary_index=0, part=_wire(_summary(text)))
            done = _reasoning_item(item.item_id, {"type": "thinking", "thinking": text, "signature": item.signature})
        self.output.append(done)
        yield self._event("response.output_item.done", output_index=item.output_index, item=done)

    def finish(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.finished:
            return
        self.finished = True
        if self._held and self._held_index is not None:
            # JSON mode, but Claude answered in text: that text is the answer.
            yield from self._open_message(self._held_index, "text")
            yield from self._text(self._open[self._held_index], "".join(self._held))
            yield from self._stop(self._held_index)
        status, incomplete = _status(self.usage.stop_reason)
        response = self._response(status, output=self.output, usage=_usage(self.usage.tokens),
                                  incomplete_details=incomplete)
        self.response = response
        yield self._event("response.completed" if status == "completed" else "response.incomplete",
                          response=response)

    def fail(self, error_type: str, message: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """OpenAI's two failure events: ``error``, then ``response.failed`` with the response."""
        self.finished = self.failed = True
        self.usage.error_type = error_type
        code = OPENAI_TYPE_BY_ANTHROPIC.get(error_type, error_type)
        yield self._event("error", code=code, message=message, param=None)
        response = self._response("failed", output=self.output, usage=_usage(self.usage.tokens),
                                  error=ResponseError(code=code, message=message))
        yield self._event("response.failed", response=response)


def _frame(pair: tuple[str, dict[str, Any]]) -> bytes:
    return encode_event(pair[0], orjson.dumps(pair[1]))


def responses_stream(
    events: AsyncIterator[ServerSentEvent], translator: ResponsesStreamTranslator
) -> AsyncIterator[bytes]:
    """SSE bytes for the client as the upstream's events arrive; an error ends the stream with
    ``error`` and ``response.failed``."""
    return translate_stream(
        events, translator, _frame, "the upstream stream ended before the response was complete"
    )
