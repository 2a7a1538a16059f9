"""A Claude Code run (one API call per turn) as one Anthropic message: every turn's blocks renumbered,
one ``message_delta`` with the run's total usage. Text comes from the partial events; a turn's
``AssistantMessage`` repeats it and is used only if that turn did not stream. Claude Code's own tool
uses/results follow ``CLAUDE__SDK_MESSAGE_MODE`` (own block types, so no client runs them; tagged text; none).
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
from ccproxy_core.models import TokenUsage
from ccproxy_core.sdk_jobs import SdkResult

MessageMode = Literal["forward", "formatted", "ignore"]
Event = tuple[str, dict[str, Any]]
SOURCE = "claude_agent_sdk"
#: The token counts summed over a run's API calls.
COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")


class RunFailed(ProxyError):
    """Claude Code ended the run with an error (the upstream refused, the CLI failed)."""


class EventBuilder:
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
        #: Usage of every API call seen streaming, and each agent's latest call (None: the main agent;
        #: else the tool use that started a subagent), which its ``message_delta`` events update.
        self._usages: list[TokenUsage] = []
        self._calls: dict[str | None, TokenUsage] = {}
        self._reported = False

    def feed(self, message: object) -> Iterator[Event]:
        if isinstance(message, SystemMessage) and message.subtype == "init":
            self.result.session_id = message.data.get("session_id") or self.result.session_id
        elif isinstance(message, StreamEvent):
            self._count(message.parent_tool_use_id, message.event)
            if message.parent_tool_use_id is None:  # a subagent's stream is not the answer
                self.result.session_id = message.session_id or self.result.session_id
                yield from self._stream_event(message.event)
        elif isinstance(message, AssistantMessage) and message.parent_tool_use_id is None:
            yield from self._assistant(message)
        elif isinstance(message, UserMessage) and message.parent_tool_use_id is None:
            for block in message.content if isinstance(message.content, list) else []:
                if isinstance(block, ToolResultBlock):
                    yield from self._tool_result(block.tool_use_id, block.content, block.is_error)
        elif isinstance(message, ResultMessage):
            yield from self._result(message)

    def spent(self) -> SdkResult:
        """The run's result, usage included: Claude Code's own account once its result came,
        else the sum of the API calls seen so far (a run cancelled or failed midway)."""
        if not self._reported:
            self.result.take(self._seen())
        return self.result

    def _seen(self) -> dict[str, Any]:
        return TokenUsage(**{name: sum(getattr(call, name) for call in self._usages) for name in COUNTS}).anthropic()

    def _count(self, agent: str | None, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self._calls[agent] = TokenUsage()
            self._calls[agent].add((event.get("message") or {}).get("usage"))
            self._usages.append(self._calls[agent])
        elif kind == "message_delta" and agent in self._calls:
            self._calls[agent].add(event.get("usage"))  # the call's totals so far, not increments

    def _start(self) -> Iterator[Event]:
        if self._started:
            return
        self._started = True
        message: dict[str, Any] = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        yield "message_start", {"type": "message_start", "message": message}

    def _open_block(self, block: dict[str, Any]) -> Iterator[Event]:
        """Start ``block`` as our next one (its index is then ``self._next_index - 1``)."""
        yield from self._start()
        self._next_index += 1
        yield "content_block_start", {"type": "content_block_start", "index": self._next_index - 1,
                                      "content_block": block}

    def _block(self, block: dict[str, Any], deltas: list[dict[str, Any]] | None = None) -> Iterator[Event]:
        yield from self._open_block(block)
        index = self._next_index - 1
        for delta in deltas or []:
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}

    def text_block(self, text: str) -> Iterator[Event]:
        yield from self._block({"type": "text", "text": ""}, [{"type": "text_delta", "text": text}])

    def _stream_event(self, event: dict[str, Any]) -> Iterator[Event]:
        kind = event.get("type")
        upstream_index = int(event.get("index", 0))
        if kind == "message_start":
            message_id = (event.get("message") or {}).get("id")
            if message_id:
                self._streamed.add(message_id)
            self._open = {}
            yield from self._start()
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") in ("text", "thinking", "redacted_thinking"):
                yield from self._open_block(block)
                self._open[upstream_index] = self._next_index - 1
        elif kind == "content_block_delta" and upstream_index in self._open:
            yield "content_block_delta", {**event, "index": self._open[upstream_index]}
        elif kind == "content_block_stop" and upstream_index in self._open:
            yield "content_block_stop", {"type": "content_block_stop", "index": self._open.pop(upstream_index)}
        elif kind == "message_delta":
            self._stop_reason = (event.get("delta") or {}).get("stop_reason") or self._stop_reason
        # message_stop and ping of each turn are not the client's: its message ends once.

    def _assistant(self, message: AssistantMessage) -> Iterator[Event]:
        if message.error is not None:
            return  # Claude Code's own text about a failed API call: the result turns it into an error
        streamed = message.message_id in self._streamed
        for block in message.content:
            if isinstance(block, TextBlock) and not streamed and block.text:
                yield from self.text_block(block.text)
            elif isinstance(block, ThinkingBlock) and not streamed:
                yield from self._block({"type": "thinking", "thinking": "", "signature": ""}, [
                    {"type": "thinking_delta", "thinking": block.thinking},
                    {"type": "signature_delta", "signature": block.signature},
                ])
            elif isinstance(block, ToolUseBlock | ServerToolUseBlock):
                self.result.tool_uses += 1
                yield from self._sdk_block("tool_use_sdk", {"id": block.id, "name": block.name, "input": block.input})
            elif isinstance(block, ToolResultBlock | ServerToolResultBlock):
                yield from self._tool_result(block.tool_use_id, block.content, getattr(block, "is_error", None))

    def _tool_result(self, tool_use_id: str, content: Any, is_error: bool | None) -> Iterator[Event]:
        yield from self._sdk_block("tool_result_sdk", {"tool_use_id": tool_use_id, "content": content,
                                                       "is_error": bool(is_error)})

    def _sdk_block(self, kind: str, fields: dict[str, Any]) -> Iterator[Event]:
        if self.mode == "forward":
            yield from self._block({"type": kind, **fields, "source": SOURCE})
        elif self.mode == "formatted":
            spacing: dict[str, Any] = {"indent": 2} if self.pretty else {"separators": (",", ":")}
            text = json.dumps(fields, ensure_ascii=False, default=str, **spacing)
            yield from self.text_block(f"\n<{kind}>\n{text}\n</{kind}>\n")

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
            yield from self.text_block(f"[Claude Code stopped: {message.subtype}]")
        self.finished = True
        yield "message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": r.stop_reason, "stop_sequence": None},
            "usage": r.anthropic(),
        }
        yield "message_stop", {"type": "message_stop"}
