"""OpenAI-compatible routes of API mode: the I/O around the pure translation (ccproxy_gateway.openai):
body, forwarding as Anthropic, metrics, and the upstream's errors as OpenAI errors, status kept."""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ccproxy_core.errors import ProxyError, upstream_error
from ccproxy_core.forwarding import Forwarder, ForwardRequest, UpstreamReply
from ccproxy_core.identity import caller
from ccproxy_core.metrics import Metrics
from ccproxy_core.settings import Settings
from ccproxy_core.sse import iter_events
from ccproxy_core.streaming import until_disconnect
from ccproxy_gateway.access import request_log
from ccproxy_gateway.openai.formats import CHAT, RESPONSES, OpenAIFormat
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.stream import translate_stream
from ccproxy_gateway.relay import Answers, client_headers
from ccproxy_gateway.response_store import ResponseStore, keep, kept_stream, plan_request
from ccproxy_gateway.routes import ApiRoute, metered


class GatewayParts(Protocol):
    """What these routes use of :class:`ccproxy_gateway.app.Gateway`, which mounts them (a
    protocol, so this module does not import the one that imports it)."""

    settings: Settings
    forwarder: Forwarder
    metrics: Metrics
    answers: Answers
    responses: ResponseStore | None

    async def read_body(self, request: Request) -> dict[str, Any]: ...


#: Client headers that mean something upstream (betas such as 1M context); the rest of an OpenAI
#: client's headers (its key, x-stainless-*, ...) stay here.
FORWARDED_HEADERS = ("anthropic-beta", "anthropic-version")


class OpenAIRoutes:
    def __init__(self, gateway: GatewayParts) -> None:
        self.gateway = gateway
        self.model_map = ModelMap.from_settings(gateway.settings.models)
        self.options = gateway.settings.openai

    def routes(self, prefix: str = "/api/v1") -> list[BaseRoute]:
        return [
            ApiRoute(f"{prefix}/chat/completions", partial(self.answer, fmt=CHAT), methods=["POST"],
                     client_format="openai-chat", metered=True),
            ApiRoute(f"{prefix}/responses", partial(self.answer, fmt=RESPONSES), methods=["POST"],
                     client_format="openai-responses", metered=True),
        ]

    async def answer(self, request: Request, fmt: OpenAIFormat) -> Response:
        started = time.perf_counter()
        store = self.gateway.responses
        raw = await self.gateway.read_body(request)
        plan, turn = await plan_request(fmt, raw, request, store, self.model_map, self.options)
        reply = await self._forward(request, plan.body, plan.client_model, plan.stream)
        if plan.stream:
            tr = fmt.translator(plan)
            frames = kept_stream(translate_stream(iter_events(reply), tr), tr, store, turn)
            headers = {**self._headers(reply), "content-type": "text/event-stream", "cache-control": "no-cache"}
            return self.gateway.answers.relay_upstream(request, started, reply, frames, lambda: tr.usage, headers)
        answer = fmt.whole(await self._message(request, reply, started), plan)
        await keep(store, turn, answer)
        return JSONResponse(answer, headers=self._headers(reply))

    async def _forward(self, request: Request, body: dict[str, Any], model: str, stream: bool) -> UpstreamReply:
        """The upstream's 200 answer; any other status is raised as an OpenAI-renderable error
        (the gateway's handler keeps the status and ``retry-after``)."""
        access = request_log(request)
        if access is not None:
            access.draft.model_requested = model
            access.draft.stream = stream
        headers = {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}
        forward = ForwardRequest(path="/v1/messages", headers=headers, body=body, key=caller(request).key,
                                 metered=metered(request))
        reply: UpstreamReply = await until_disconnect(request, self.gateway.forwarder.forward(forward))
        metrics = self.gateway.metrics
        metrics.upstream.labels(metrics.service, str(reply.status), reply.account or "").inc()
        if access is not None:
            access.note_upstream(reply)
        if reply.status != 200:
            raise upstream_error(reply.status, (await self.gateway.answers.read(request, reply))[0], reply.headers)
        return reply

    async def _message(self, request: Request, reply: UpstreamReply, started: float) -> dict[str, Any]:
        raw, usage = await self.gateway.answers.read(request, reply)
        self.gateway.answers.done(request, started, usage)
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProxyError(502, "the upstream's answer is not valid JSON") from exc
        if not isinstance(message, dict):
            raise ProxyError(502, "the upstream's answer is not a message")
        return message

    @staticmethod
    def _headers(reply: UpstreamReply) -> dict[str, str]:
        headers = client_headers(reply)
        headers.pop("content-type", None)
        if "request-id" in headers:
            headers["x-request-id"] = headers["request-id"]
        return headers
