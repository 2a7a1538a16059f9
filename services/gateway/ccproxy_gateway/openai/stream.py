"""The translation both OpenAI formats share. Both read the same Anthropic events, hold JSON
mode's stray text the same way and report the same usage; a subclass only says what a block's
opening, its text and its closing become in its format. A whole message is translated as the
stream that would have carried it (``take_whole``), so both kinds of answer say the same."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ccproxy_core.errors import ProxyError, validation_error
from ccproxy_core.settings import OpenAISettings
from ccproxy_core.sse import ServerSentEvent
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.request import JSON_TOOL, Plan
from ccproxy_gateway.relay import Usage

#: What a translator yields for one event: a chunk body (chat), an ``(event, body)`` pair (responses).
T = TypeVar("T")
Kind = Literal["text", "json", "tool", "thinking"]
_KINDS: dict[str, Kind] = {"text": "text", "tool_use": "tool", "thinking": "thinking"}
#: The delta type that adds to a block of each kind, and the delta's field holding the text.
_ADDS: dict[Kind, tuple[str, str]] = {
    "text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"),
    "json": ("input_json_delta", "partial_json"), "tool": ("input_json_delta", "partial_json"),
}


def wire(reply: BaseModel) -> dict[str, Any]:
    """An ``openai`` type as sent: the fields set, so ``null`` only where OpenAI writes it too."""
    return reply.model_dump(exclude_unset=True)


@dataclass(slots=True)
class Block:
    """An Anthropic content block while it streams; ``json`` is the JSON mode tool's input."""

    index: int
    kind: Kind
    #: Its place among the output (every block shown, redacted thinking included).
    position: int
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    signature: str = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)


class StreamTranslator(ABC, Generic[T]):
    """Anthropic stream events in, one OpenAI format's output out, one event at a time."""

    def __init__(self, json_mode: bool, created: int | None) -> None:
        self.json_mode = json_mode
        self.created = created or int(time.time())
        #: Read as the stream passes: the answer's usage for billing, metrics and the access log.
        self.usage = Usage()
        self.finished = False
        self.failed = False
        self.answered_json = False
        self._open: dict[int, Block] = {}
        #: The blocks closed so far, in order: what a whole answer is made of.
        self.done: list[Block] = []
        self._shown = 0
        #: JSON mode: text held until it is clear whether the JSON tool follows (then the text is
        #: not the answer and is dropped) or not (then it is the answer, given at the end).
        self._held: list[str] = []
        self._held_index: int | None = None

    def on_event(self, name: str, data: dict[str, Any]) -> Iterator[T]:
        self.usage.read(name, data)
        index = int(data.get("index", 0))
        if name == "content_block_delta":
            yield from self._delta(index, data.get("delta") or {})
        elif name == "content_block_start":
            yield from self._start(index, data.get("content_block") or {})
        elif name == "content_block_stop" and index in self._open:
            yield from self._close(self._open.pop(index))
        elif name == "message_start":
            yield from self.started(data.get("message") or {})
        elif name == "message_stop":
            yield from self.finish()
        elif name == "error":
            error = data.get("error") or {}
            yield from self.fail(str(error.get("type", "api_error")), str(error.get("message", "upstream error")))

    def _start(self, index: int, block: dict[str, Any]) -> Iterator[T]:
        kind = block.get("type")
        if kind == "text" and self.json_mode:
            if not self.answered_json:
                self._held.append(block.get("text") or "")
                self._held_index = index if self._held_index is None else self._held_index
            return
        if kind == "redacted_thinking":
            self._shown += 1
            redacted = {"type": "redacted_thinking", "data": block.get("data", "")}
            yield from self.redacted(index, self._shown - 1, redacted)
            return
        shown = _KINDS.get(kind or "")
        if shown is None:
            return  # server tools and future blocks: nothing OpenAI can show
        if shown == "tool" and self.json_mode and block.get("name") == JSON_TOOL:
            self.answered_json = True
            self._held.clear()
            shown = "json"
        opened = Block(index, shown, self._shown, call_id=block.get("id", ""), name=block.get("name", ""),
                       signature=block.get("signature") or "")
        self._shown += 1
        self._open[index] = opened
        yield from self.opened(opened)
        if text := block.get("text") or block.get("thinking"):
            yield from self._add(opened, text)

    def _delta(self, index: int, delta: dict[str, Any]) -> Iterator[T]:
        block = self._open.get(index)
        dtype = delta.get("type")
        if block is None:
            if dtype == "text_delta" and self.json_mode and not self.answered_json and delta.get("text"):
                self._held.append(delta["text"])
        elif dtype == "signature_delta" and block.kind == "thinking":
            block.signature += delta.get("signature", "")
        elif dtype == _ADDS[block.kind][0] and (text := delta.get(_ADDS[block.kind][1])):
            yield from self._add(block, text)

    def _close(self, block: Block) -> Iterator[T]:
        self.done.append(block)
        yield from self.closed(block)

    def _add(self, block: Block, text: str) -> Iterator[T]:
        block.parts.append(text)
        yield from self.added(block, text)

    def finish(self) -> Iterator[T]:
        if self.finished:
            return
        self.finished = True
        if self._held and self._held_index is not None:
            # JSON mode, but Claude answered in text: that text is the answer.
            block = Block(self._held_index, "text", self._shown)
            yield from self.opened(block)
            yield from self._add(block, "".join(self._held))
            yield from self._close(block)
        yield from self.ended()

    def take_whole(self, message: dict[str, Any]) -> None:
        """Read a whole message as its stream's events; the format's answer is what the translator kept."""
        events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": {**message, "content": []}})]
        for index, block in enumerate(message.get("content") or []):
            events.append(("content_block_start", {"index": index, "content_block": block}))
            if block.get("type") == "tool_use":
                arguments = orjson.dumps(block.get("input", {})).decode()
                events.append(("content_block_delta", {"index": index, "delta": {
                    "type": "input_json_delta", "partial_json": arguments}}))
            events.append(("content_block_stop", {"index": index}))
        events += [("message_delta", {"delta": {"stop_reason": message.get("stop_reason")}}), ("message_stop", {})]
        for name, data in events:
            for _ in self.on_event(name, data):
                pass

    def fail(self, error_type: str, message: str) -> Iterator[T]:
        self.finished = self.failed = True
        self.usage.error_type = error_type
        yield from self.failure(error_type, message)

    # What each format says: ----------------------------------------------------------------------

    #: The failure's message for a stream that ends without ``message_stop``.
    ended_early: ClassVar[str] = "the upstream stream ended before the answer was complete"
    #: What follows a stream that did not fail.
    end: ClassVar[bytes | None] = None

    @abstractmethod
    def frame(self, out: T) -> bytes: ...

    @abstractmethod
    def started(self, message: dict[str, Any]) -> Iterator[T]: ...

    @abstractmethod
    def opened(self, block: Block) -> Iterator[T]: ...

    @abstractmethod
    def added(self, block: Block, text: str) -> Iterator[T]: ...

    @abstractmethod
    def closed(self, block: Block) -> Iterator[T]: ...

    @abstractmethod
    def redacted(self, index: int, position: int, block: dict[str, Any]) -> Iterator[T]: ...

    @abstractmethod
    def ended(self) -> Iterator[T]: ...

    @abstractmethod
    def failure(self, error_type: str, message: str) -> Iterator[T]: ...


@dataclass(frozen=True, slots=True)
class OpenAIFormat:
    """Chat Completions or Responses behind one interface, so one route serves either format in
    either mode (API, SDK): parse, translate, answer whole, or relay a stream."""

    #: Whether requests may refer to stored responses (ccproxy_gateway.response_store).
    stored: bool
    request: type[BaseModel]
    #: The parsed request -> its plan (``ChatPlan`` / ``ResponsesPlan``).
    translate: Callable[[Any, ModelMap, OpenAISettings], Plan]
    #: A whole Anthropic message and the plan -> the client's answer.
    whole: Callable[[dict[str, Any], Any], dict[str, Any]]
    #: The plan -> the stream translator (``translate_stream`` drives it).
    translator: Callable[[Any], StreamTranslator[Any]]

    def parse(self, data: dict[str, Any]) -> Any:
        """The request as its model; a wrong shape is the client's 400 naming the field."""
        try:
            return self.request.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc


async def translate_stream(
    events: AsyncIterator[ServerSentEvent], translator: StreamTranslator[T]
) -> AsyncIterator[bytes]:
    """SSE bytes for the client as the upstream's events arrive; an error (in the stream or on the
    connection) or a stream without ``message_stop`` ends it with the format's failure."""
    frame = translator.frame
    try:
        async for event in events:
            if event.event == "ping":
                continue
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            for out in translator.on_event(event.event, data):
                yield frame(out)
            if translator.finished:
                break
        else:
            for out in translator.fail("api_error", translator.ended_early):
                yield frame(out)
    except ProxyError as exc:
        for out in translator.fail(exc.error_type, exc.message):
            yield frame(out)
    if translator.end is not None and not translator.failed:
        yield translator.end
