"""SDK mode's public API, ``/sdk/v1/...``: each request is an arq job (ccproxy_core.sdk_jobs) whose
records are relayed in the client's format. Claude Code's upstream calls are billed on ``/api``
with its run token, so the ``/sdk`` request is only admitted (a 429/402 is never queued) and logs
the run's summary without tokens: no sum counts a run twice. See docs/architecture.md."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import orjson
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ccproxy_core.errors import ProxyError, anthropic_error_body
from ccproxy_core.identity import LOCAL, caller, public
from ccproxy_core.models import TokenUsage
from ccproxy_core.redis import as_text, unavailable_as_503
from ccproxy_core.sdk_jobs import END, ERROR, RESULT, START, SdkJob, SdkQueue, SdkResult, own_session, session_uuid
from ccproxy_core.sdk_options import check_overrides, workspace_root
from ccproxy_core.sse import ServerSentEvent, encode_event
from ccproxy_core.streaming import until_disconnect
from ccproxy_gateway.access import request_log
from ccproxy_gateway.app import Gateway, preflight
from ccproxy_gateway.body import validate_messages_request
from ccproxy_gateway.openai.chat import CHAT
from ccproxy_gateway.openai.responses import RESPONSES
from ccproxy_gateway.openai.stream import OpenAIFormat
from ccproxy_gateway.relay import Usage
from ccproxy_gateway.routes import ApiRoute

#: Continues a Claude Code session (as does ``/sdk/{session_id}/v1``); every answer names its session in it.
SESSION_HEADER = "x-claude-session-id"
#: Seconds of silence (Claude Code running a long tool) after which a stream gets a ``ping``.
PING_AFTER = 10.0
#: Block types that are ccproxy's own (``forward`` mode).
SDK_BLOCKS = ("tool_use_sdk", "tool_result_sdk")


class SdkRun:
    """One job's records: the head (up to the first output, which decides the status code), then the rest."""

    def __init__(self, queue: SdkQueue, job: SdkJob, records: AsyncIterator[tuple[str, Any]]) -> None:
        self.queue = queue
        self.job = job
        self.head: list[tuple[str, Any]] = []
        self.result: SdkResult | None = None
        self.error: dict[str, Any] | None = None
        #: Nothing more to read (the run's end, an error, or the request gave up on it).
        self.done = False
        self.first_output: float | None = None
        self.headers = {SESSION_HEADER: job.session_id or ""}
        self._relayed = self._relay(records)

    async def _relay(self, records: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
        """The records worth relaying (bookkeeping absorbed)."""
        try:
            async for name, data in records:
                if name == END:
                    break
                if name == RESULT:
                    self.result = SdkResult.model_validate(data)
                elif name == ERROR:
                    self.error = data
                    yield name, data
                elif name != START:
                    if self.first_output is None and name != "ping":
                        self.first_output = time.perf_counter()
                    yield name, data
        except ProxyError as exc:  # no worker in time, the worker died, the run timed out
            if self.first_output is None:
                raise  # still time for a status code (and its retry-after)
            self.done = True
            self.error = {"status": exc.status, "type": exc.error_type, "message": exc.message}
            yield ERROR, self.error
        self.done = True

    async def wait_head(self) -> None:
        """Read until the first output; an error before it is raised as the answer's status."""
        async for name, data in self._relayed:
            if name == ERROR:
                raise ProxyError(int(data.get("status", 500)), str(data.get("message")), data.get("type"))
            if name != "ping":
                self.head.append((name, data))
                return
        raise ProxyError(502, "the sdk-worker ended the run without an answer")

    async def rest(self) -> AsyncIterator[tuple[str, Any]]:
        """The head, then every later record to the end (errors as Anthropic ``error`` events)."""
        for record in self.head:
            yield record
        self.head = []
        async for name, data in self._relayed:
            if name == ERROR:
                yield "error", orjson.loads(anthropic_error_body(str(data.get("type")), str(data.get("message"))))
            else:
                yield name, data

    async def end(self) -> None:
        """Stop the run if it still goes (the client left): through arq's abort set once a worker has it."""
        if not self.done:
            with anyio.CancelScope(shield=True):
                await self.queue.cancel(self.job.id)
            self.done = True

    def usage(self) -> Usage:
        """The /sdk answer's usage: the model and stop reason, no tokens (its calls have them)."""
        result = self.result or SdkResult()
        return Usage(TokenUsage(model=result.model), result.stop_reason, first_token=self.first_output)


async def as_text_blocks(records: AsyncIterator[tuple[str, Any]], pretty: bool) -> AsyncIterator[tuple[str, Any]]:
    """``tool_use_sdk`` / ``tool_result_sdk`` blocks as text blocks (OpenAI formats have no place for them)."""
    async for name, data in records:
        if name == "content_block_start" and (data.get("content_block") or {}).get("type") in SDK_BLOCKS:
            block = dict(data["content_block"])
            kind = block.pop("type")
            block.pop("source", None)
            text = orjson.dumps(block, option=orjson.OPT_INDENT_2 if pretty else 0).decode()
            index = data.get("index", 0)
            yield name, {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            yield "content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": f"\n<{kind}>\n{text}\n</{kind}>\n"},
            }
        else:
            yield name, data


def accumulate(events: list[tuple[str, Any]]) -> dict[str, Any]:
    """One Anthropic message from its stream events (the non-streaming answer)."""
    message: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "message_start":
            message = dict(data.get("message") or {})
        elif name == "content_block_start":
            blocks[int(data.get("index", 0))] = dict(data.get("content_block") or {})
        elif name == "content_block_delta":
            block = blocks.setdefault(int(data.get("index", 0)), {"type": "text", "text": ""})
            delta = data.get("delta") or {}
            kind = delta.get("type")
            if kind == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif kind == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif kind == "signature_delta":
                block["signature"] = delta.get("signature", "")
        elif name == "message_delta":
            message.update(data.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(data.get("usage") or {})}
        elif name == "error":
            error = data.get("error") or {}
            raise ProxyError(500, str(error.get("message")), str(error.get("type", "api_error")))
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


class SdkRoutes:
    def __init__(self, gateway: Gateway, redis: Redis) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.queue = SdkQueue(redis, self.settings.claude, self.settings.redis.key_prefix)

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            public(Route("/sdk", preflight, methods=["HEAD", "GET"])),
            public(Route("/sdk/", preflight, methods=["HEAD", "GET"])),
            # The same listing as API mode's: the models Claude Code can run are the upstream's.
            ApiRoute("/sdk/v1/models", self.gateway.models, methods=["GET"]),
            Route("/sdk/models", self.gateway.models, methods=["GET"]),
            Route("/sdk/status", self.status, methods=["GET"]),
        ]
        for prefix in ("/sdk/v1", "/sdk/{session_id}/v1"):
            routes += [
                # Not metered: Claude Code's own calls to /api are (module docstring).
                ApiRoute(f"{prefix}/messages", self.answer, methods=["POST"]),
                ApiRoute(f"{prefix}/chat/completions", partial(self.answer, fmt=CHAT), methods=["POST"],
                         client_format="openai-chat"),
                ApiRoute(f"{prefix}/responses", partial(self.answer, fmt=RESPONSES), methods=["POST"],
                         client_format="openai-responses"),
            ]
        return routes

    async def status(self, request: Request) -> Response:
        redis, keys = self.queue.redis, self.queue.keys
        async with unavailable_as_503("the SDK status"):
            queued = await redis.zcard(keys.queue)
            workers = [as_text(k) async for k in redis.scan_iter(match=keys.health("*"), count=100)]
        claude = self.settings.claude
        return JSONResponse({
            "status": "ok" if workers else "degraded", "mode": "sdk",
            "queue": {"name": keys.queue, "queued": queued},
            "workers": sorted(w.removeprefix(keys.health("")) for w in workers),
            "message_mode": claude.sdk_message_mode, "workspace_root": str(workspace_root(self.settings)),
            "overridable_options": claude.overridable_options, "client_auth": self.gateway.auth.enabled,
        })

    async def answer(self, request: Request, fmt: OpenAIFormat | None = None) -> Response:
        """A Messages request (``fmt`` None) or an OpenAI one as a run, streamed or whole."""
        started = time.perf_counter()
        body = await self.gateway.read_body(request)
        raw_options = body.pop("claude_options", None)
        if fmt is None:
            validate_messages_request(body)
            run = await self._start(request, body, raw_options)
            if body.get("stream") is True:
                frames = (encode_event(name, orjson.dumps(data)) async for name, data in run.rest())
                return self._stream(request, run, frames, started)
            return JSONResponse(await self._collect(request, run, run.rest(), started), headers=run.headers)
        exchange = await self.gateway.exchange(request, fmt, body)
        run = await self._start(request, exchange.plan.body, raw_options)
        records = as_text_blocks(run.rest(), self.settings.claude.pretty_format)
        if exchange.plan.stream:
            events = (ServerSentEvent(name, orjson.dumps(data).decode()) async for name, data in records)
            return self._stream(request, run, exchange.stream(events)[0], started)
        message = await self._collect(request, run, records, started)
        return JSONResponse(await exchange.answer(message), headers=run.headers)

    async def _start(self, request: Request, body: dict[str, Any], raw_options: Any) -> SdkRun:
        """Check, enqueue, and wait for the run's first output (or its error)."""
        options = check_overrides(raw_options, self.settings)
        named = request.path_params.get("session_id") or request.headers.get(SESSION_HEADER)
        user = caller(request)
        # A name is the caller's own: another key's "demo" is another session.
        session_id = session_uuid(named, user.id) if named else str(uuid.uuid4())
        job = SdkJob(id=uuid.uuid4().hex, body=body, session_id=session_id, options=options, key_id=user.id,
                     key_name="" if user == LOCAL else user.name, key=user.key)
        if named:  # a session id from an answer of someone else's is nobody's business here
            async with unavailable_as_503("SDK mode"):
                await own_session(self.queue.redis, self.queue.keys, session_id, user.id,
                                  self.settings.claude.session_ttl)
        access = request_log(request)
        if access is not None:
            d = access.draft
            d.mode, d.model_requested = "sdk", str(body.get("model") or "")
            d.stream, d.sdk_session_id = body.get("stream") is True, session_id
        # Admitted like one API request (a refused run is never queued), released at once: its /api calls are billed.
        if self.gateway.meter is not None:
            self.gateway.meter.settle(await self.gateway.meter.admit(user.key, body), TokenUsage())
        async with unavailable_as_503("SDK mode"):
            await self.queue.submit(job)
        run = SdkRun(self.queue, job, self.queue.records(job.id, ping_after=PING_AFTER))
        try:
            async with unavailable_as_503("SDK mode"):
                await until_disconnect(request, run.wait_head())
        except BaseException:
            await run.end()
            raise
        return run

    async def _collect(
        self, request: Request, run: SdkRun, records: AsyncIterator[tuple[str, Any]], started: float
    ) -> dict[str, Any]:
        async def read_all() -> list[tuple[str, Any]]:
            return [r async for r in records if r[0] != "ping"]

        try:
            events = await until_disconnect(request, read_all())
        finally:
            await run.end()
        try:
            return accumulate(events)
        finally:
            self._note(request, run)
            first = (run.first_output or time.perf_counter()) - started
            self.gateway.answers.record(request, 200, started, run.usage(), first)

    def _stream(self, request: Request, run: SdkRun, frames: AsyncIterator[bytes], started: float) -> Response:
        async def relayed() -> AsyncIterator[bytes]:
            async for frame in frames:
                yield frame
            async for _ in run.rest():  # the summary (usage, cost) follows the last event
                pass

        async def end(usage: Usage) -> None:
            await run.end()
            self._note(request, run)

        headers = {**run.headers, "content-type": "text/event-stream", "cache-control": "no-cache"}
        return self.gateway.answers.stream(request, started, relayed(), run.usage, end, headers)

    @staticmethod
    def _note(request: Request, run: SdkRun) -> None:
        """The access log's SDK fields: Claude Code's own cost, turns, tool uses, the session."""
        access = request_log(request)
        if access is None:
            return
        result = run.result or SdkResult()
        d = access.draft
        d.sdk_cost_usd, d.sdk_turns, d.sdk_tool_uses = result.cost_usd, result.num_turns, result.tool_uses
        d.sdk_session_id = result.session_id or run.job.session_id or ""
        if run.error is not None:
            d.error_type = str(run.error.get("type") or "api_error")
