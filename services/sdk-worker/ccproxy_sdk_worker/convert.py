"""Claude Code's SDK messages as one Anthropic message stream.

A run of Claude Code is several API calls (one per turn of its tool loop); the client gets one
message: one ``message_start``, the content blocks of every turn renumbered in order, one
``message_delta`` with the run's total usage, one ``message_stop``.

Text and thinking come from the SDK's partial stream events, delta by delta. The complete
``AssistantMessage`` that follows each turn repeats them: it is used only for what the stream
did not carry (a turn that arrived without partial events), so no text is sent twice. Claude
Code's own tool uses and their results are shown per ``CLAUDE__SDK_MESSAGE_MODE``:

- ``forward``: content blocks of their own types, ``tool_use_sdk`` and ``tool_result_sdk``, which
  no client mistakes for a tool call it should run itself;
- ``formatted``: a text block with the same data in a ``<tool_use_sdk>`` / ``<tool_result_sdk>``
  tag, JSON pretty-printed or compact per ``CLAUDE__PRETTY_FORMAT``;
- ``ignore``: not shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from claude_agent_sdk.types import ServerToolResultBlock, ServerToolUseBlock

from ccproxy_core.errors import ANTHROPIC_TYPE_BY_STATUS, ProxyError
from ccproxy_core.models import one_hour_writes
from ccproxy_core.sdk_jobs import SdkResult

MessageMode = Literal["forward", "formatted", "ignore"]
Event = tuple[str, dict[str, Any]]
SOURCE = "claude_agent_sdk"


class RunFailed(ProxyError):
    """Claude Code ended the run with an error (the upstream refused, the CLI failed)."""


class EventBuilder:
    """Feed SDK messages in order; get Anthropic ``(event, data)`` pairs."""

    def __init__(self, message_id: str, model: str, mode: MessageMode = "forward", pretty: bool = True) -> None:
        self.message_id = message_id
        self.model = model
        self.mode = mode
        self.pretty = pretty
        self.result = SdkResult(model=model)
        self._started = False
        self._next_index = 0
        #: Upstream block index -> our index, for the turn being streamed.
        self._open: dict[int, int] = {}
        #: API message ids whose text arrived as partial events.
        self._streamed: set[str] = set()
        self._stop_reason: str | None = None
        self.finished = False
        #: Usage of the API calls seen streaming, per agent (None: the main one; else the tool
        #: use that started a subagent): the calls done, and each agent's call in progress.
        self._spent: dict[str, int] = {}
        self._calls: dict[str | None, dict[str, Any]] = {}
        self._reported = False

    def feed(self, message: object) -> list[Event]:
        return list(self._feed(message))

    def notice(self, text: str) -> list[Event]:
        """A line of ccproxy's own (a permission that timed out), as a text block of its own.

        Called while Claude Code waits on a permission, when no block of a turn is open."""
        return list(self._text_block(text))

    def _feed(self, message: object) -> Iterator[Event]:
        if isinstance(message, SystemMessage):
            if message.subtype == "init":
                self.result.session_id = message.data.get("session_id") or self.result.session_id
            return
        if isinstance(message, StreamEvent):
            self._count(message.parent_tool_use_id, message.event)
            if message.parent_tool_use_id is None:  # a subagent's stream is not the answer
                self.result.session_id = message.session_id or self.result.session_id
                yield from self._stream_event(message.event)
            return
        if isinstance(message, AssistantMessage):
            if message.parent_tool_use_id is None:
                yield from self._assistant(message)
            return
        if isinstance(message, UserMessage):
            if message.parent_tool_use_id is None and isinstance(message.content, list):
                for block in message.content:
                    if isinstance(block, ToolResultBlock):
                        yield from self._tool_result(block.tool_use_id, block.content, block.is_error)
            return
        if isinstance(message, ResultMessage):
            yield from self._result(message)

    def spent(self) -> SdkResult:
        """The run's result, usage included: Claude Code's own account once its result came,
        else the sum of the API calls seen so far (a run cancelled or failed midway)."""
        if not self._reported:
            self.result.take(self._seen())
        return self.result

    def _seen(self) -> dict[str, Any]:
        """The usage of the API calls seen so far, summed (as an Anthropic ``usage`` object)."""
        totals = dict(self._spent)
        for usage in self._calls.values():
            _add_usage(totals, usage)
        one_hour = totals.pop(ONE_HOUR, 0)
        return {**totals, "cache_creation": {"ephemeral_1h_input_tokens": one_hour}}

    def _count(self, agent: str | None, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            if agent in self._calls:
                _add_usage(self._spent, self._calls[agent])
            self._calls[agent] = dict((event.get("message") or {}).get("usage") or {})
        elif kind == "message_delta" and agent in self._calls:
            # message_delta's counts are the call's totals so far, not increments.
            self._calls[agent].update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})

    # -- pieces ---------------------------------------------------------------------------------

    def _start(self) -> Iterator[Event]:
        if self._started:
            return
        self._started = True
        yield "message_start", {
            "type": "message_start",
            "message": {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }

    def _block(self, block: dict[str, Any], deltas: list[dict[str, Any]] | None = None) -> Iterator[Event]:
        """A whole block at once: start (with the block), its deltas, stop."""
        yield from self._start()
        index = self._next_index
        self._next_index += 1
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        for delta in deltas or []:
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}

    def _text_block(self, text: str) -> Iterator[Event]:
        yield from self._block({"type": "text", "text": ""}, [{"type": "text_delta", "text": text}])

    def _stream_event(self, event: dict[str, Any]) -> Iterator[Event]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            if message.get("id"):
                self._streamed.add(message["id"])
            self._open = {}
            yield from self._start()
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") in ("text", "thinking", "redacted_thinking"):
                yield from self._start()
                index = self._next_index
                self._next_index += 1
                self._open[int(event.get("index", 0))] = index
                yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        elif kind == "content_block_delta":
            ours = self._open.get(int(event.get("index", 0)))
            if ours is not None:
                yield "content_block_delta", {**event, "index": ours}
        elif kind == "content_block_stop":
            closed = self._open.pop(int(event.get("index", 0)), None)
            if closed is not None:
                yield "content_block_stop", {"type": "content_block_stop", "index": closed}
        elif kind == "message_delta":
            self._stop_reason = (event.get("delta") or {}).get("stop_reason") or self._stop_reason
        # message_stop and ping of each turn are not the client's: its message ends once.

    def _assistant(self, message: AssistantMessage) -> Iterator[Event]:
        if message.error is not None:
            # Claude Code's own text about a failed API call: the result turns it into an error.
            return
        streamed = message.message_id in self._streamed
        for block in message.content:
            if isinstance(block, TextBlock):
                if not streamed and block.text:
                    yield from self._text_block(block.text)
            elif isinstance(block, ThinkingBlock):
                if not streamed:
                    yield from self._block(
                        {"type": "thinking", "thinking": "", "signature": ""},
                        [
                            {"type": "thinking_delta", "thinking": block.thinking},
                            {"type": "signature_delta", "signature": block.signature},
                        ],
                    )
            elif isinstance(block, ToolUseBlock | ServerToolUseBlock):
                self.result.tool_uses += 1
                yield from self._tool_use(block.id, block.name, block.input)
            elif isinstance(block, ToolResultBlock):
                yield from self._tool_result(block.tool_use_id, block.content, block.is_error)
            elif isinstance(block, ServerToolResultBlock):
                yield from self._tool_result(block.tool_use_id, block.content, None)

    def _json(self, value: Any) -> str:
        if self.pretty:
            return json.dumps(value, indent=2, ensure_ascii=False, default=str)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)

    def _tool_use(self, tool_id: str, name: str, tool_input: dict[str, Any]) -> Iterator[Event]:
        yield from self._sdk_block("tool_use_sdk", {"id": tool_id, "name": name, "input": tool_input})

    def _tool_result(self, tool_use_id: str, content: Any, is_error: bool | None) -> Iterator[Event]:
        fields = {"tool_use_id": tool_use_id, "content": content, "is_error": bool(is_error)}
        yield from self._sdk_block("tool_result_sdk", fields)

    def _sdk_block(self, kind: str, fields: dict[str, Any]) -> Iterator[Event]:
        """A tool use or result of Claude Code's own, shown per the message mode."""
        if self.mode == "forward":
            yield from self._block({"type": kind, **fields, "source": SOURCE})
        elif self.mode == "formatted":
            yield from self._text_block(f"\n<{kind}>\n{self._json(fields)}\n</{kind}>\n")

    def _result(self, message: ResultMessage) -> Iterator[Event]:
        usage = message.usage or {}
        if message.is_error and not any(usage.get(k) for k in ("input_tokens", "output_tokens")):
            usage = self._seen()  # a run stopped at its max_budget_usd reports no usage of its own
        r = self.result
        self._reported = True
        r.session_id = message.session_id or r.session_id
        r.take(usage)
        r.cost_usd = message.total_cost_usd
        r.num_turns = message.num_turns
        r.duration_ms = message.duration_ms
        if message.model_usage:
            r.model = next(iter(message.model_usage)) or r.model
        if message.is_error and (message.api_error_status or message.subtype == "error_during_execution"):
            status = message.api_error_status or 500
            detail = "; ".join(message.errors or []) or message.result or message.subtype
            raise RunFailed(status if status in ANTHROPIC_TYPE_BY_STATUS else 502, f"Claude Code: {detail}")
        r.stop_reason = message.stop_reason or self._stop_reason or "end_turn"
        if r.stop_reason == "tool_use":  # Claude Code ran its tools itself; for the client the turn ended
            r.stop_reason = "end_turn"
        yield from self._start()
        if message.is_error and message.subtype.startswith("error_") and self._next_index == 0:
            # max turns or budget hit before any text: say so rather than answer with nothing.
            yield from self._text_block(f"[Claude Code stopped: {message.subtype}]")
        self.finished = True
        yield "message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": r.stop_reason, "stop_sequence": None},
            "usage": r.anthropic(),
        }
        yield "message_stop", {"type": "message_stop"}


#: Where :func:`_add_usage` sums ``cache_creation.ephemeral_1h_input_tokens`` (priced apart).
ONE_HOUR = "cache_creation_1h"


def _add_usage(totals: dict[str, int], usage: dict[str, Any]) -> None:
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        value = usage.get(name)
        if isinstance(value, int):
            totals[name] = totals.get(name, 0) + value
    one_hour = one_hour_writes(usage)
    if one_hour:
        totals[ONE_HOUR] = totals.get(ONE_HOUR, 0) + one_hour
