"""One route declaration: a new endpoint is one ``ApiRoute`` in a route list, and its error
format, metering, access-log entry and metrics label all follow from it (nothing else lists
paths). In process: the gateway app on httpx's ASGI transport, the parts of test_gateway_parts."""

from __future__ import annotations

import httpx2 as httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import ForwardRequest, UpstreamReply
from ccproxy_core.identity import caller
from ccproxy_core.metrics import Metrics
from ccproxy_core.settings import Settings
from ccproxy_gateway.app import Gateway, create_app
from ccproxy_gateway.routes import ApiRoute, metered
from tests.unit.test_gateway_parts import KEY, MODEL, Events, FakeForwarder, FakeKeys, available


class RecordingForwarder(FakeForwarder):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ForwardRequest] = []

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        self.seen.append(request)
        return await super().forward(request)


class Admissions(FakeKeys):
    def __init__(self) -> None:
        super().__init__()
        self.admitted = 0

    async def admit(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        self.admitted += 1
        return await super().admit(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def gateway() -> tuple[Gateway, RecordingForwarder, Admissions, Events]:
    forwarder, keys, events = RecordingForwarder(), Admissions(), Events()
    return Gateway(Settings(), forwarder, available, Metrics("gateway"), events, keys), forwarder, keys, events


async def send(gateway: Gateway, routes: list[ApiRoute], method: str, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(gateway, extra_routes=list(routes)))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.request(method, path, headers={"x-api-key": KEY}, **kwargs)  # type: ignore[arg-type]


async def test_a_new_endpoint_is_one_declaration(gateway: tuple[Gateway, RecordingForwarder, Admissions, Events]
                                                 ) -> None:
    """An OpenAI-speaking, metered, logged endpoint added by one line: its errors are OpenAI's,
    its forward is metered, its access-log event and metrics label carry its template."""
    parts, forwarder, keys, events = gateway

    async def widget(request: Request) -> Response:
        if request.path_params["name"] == "broken":
            raise ProxyError(400, "no such widget")
        forward = ForwardRequest(path="/v1/messages", headers={}, body={"model": MODEL, "max_tokens": 5,
                                 "messages": []}, key=caller(request).key, metered=metered(request))
        reply = await parts.forwarder.forward(forward)
        await reply.aclose()
        return JSONResponse({"ok": True})

    route = ApiRoute("/sdk/v1/widgets/{name}", widget, methods=["POST"], client_format="openai-chat", metered=True)
    answer = await send(parts, [route], "POST", "/sdk/v1/widgets/w1")
    assert answer.status_code == 200, answer.text
    assert forwarder.seen[-1].metered and keys.admitted == 1
    refused = await send(parts, [route], "POST", "/sdk/v1/widgets/broken")
    assert refused.status_code == 400 and "type" not in refused.json()  # OpenAI's shape: {"error": {...}}
    assert refused.json()["error"]["message"] == "no such widget"
    wrong_method = await send(parts, [route], "GET", "/sdk/v1/widgets/w1")
    assert wrong_method.status_code == 405 and "type" not in wrong_method.json()

    assert [(e.endpoint, e.mode, e.client_format, e.status) for e in events.events] == [
        ("/sdk/v1/widgets/{name}", "sdk", "openai-chat", 200),
        ("/sdk/v1/widgets/{name}", "sdk", "openai-chat", 400),
        ("/sdk/v1/widgets/{name}", "sdk", "openai-chat", 405),
    ]
    labels = {s.labels["route"] for m in parts.metrics.registry.collect() for s in m.samples
              if m.name == "ccproxy_requests" and "route" in s.labels}
    assert "/sdk/v1/widgets/{name}" in labels and not any("w1" in label or "broken" in label for label in labels)


async def test_what_a_route_does_not_declare_it_does_not_get(
    gateway: tuple[Gateway, RecordingForwarder, Admissions, Events],
) -> None:
    parts, forwarder, keys, events = gateway

    async def free(request: Request) -> Response:
        forward = ForwardRequest(path="/v1/messages", headers={}, body={"model": MODEL, "messages": []},
                                 key=caller(request).key, metered=metered(request))
        await (await parts.forwarder.forward(forward)).aclose()
        raise ProxyError(409, "anthropic-shaped")

    route = ApiRoute("/api/v1/free", free, methods=["POST"], logged=False)
    answer = await send(parts, [route], "POST", "/api/v1/free")
    assert answer.status_code == 409 and answer.json()["type"] == "error"  # Anthropic's shape
    assert not forwarder.seen[-1].metered and keys.admitted == 0
    assert events.events == []


async def test_the_built_in_routes_are_declared_as_before(
    gateway: tuple[Gateway, RecordingForwarder, Admissions, Events],
) -> None:
    """Messages is metered, count_tokens is not; the OpenAI routes speak OpenAI; a path no route
    answers gets its format from the path (one place: ``ccproxy_core.errors.path_format``)."""
    parts, forwarder, keys, events = gateway
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert (await send(parts, [], "POST", "/api/v1/messages", json=body)).status_code == 200
    assert forwarder.seen[-1].metered
    assert (await send(parts, [], "POST", "/api/v1/messages/count_tokens", json=body)).status_code == 200
    assert not forwarder.seen[-1].metered
    assert keys.admitted == 1
    bad_chat = await send(parts, [], "POST", "/api/v1/chat/completions", json={"model": MODEL})
    assert bad_chat.status_code == 400 and "type" not in bad_chat.json()
    assert (await send(parts, [], "GET", "/api/v1/nope")).json()["type"] == "error"
    assert [(e.endpoint, e.client_format) for e in events.events] == [
        ("/api/v1/messages", "anthropic"), ("/api/v1/messages/count_tokens", "anthropic"),
        ("/api/v1/chat/completions", "openai-chat"),
        ("/api/v1/nope", "anthropic"),  # no route: logged under its own path (a client's wrong endpoint)
    ]
