"""The fake's routes: the Anthropic API surface plus OAuth and ``/_fake`` control.

Every API request is recorded (method, path, query, headers, parsed body, what happened to the
answer) before it is checked, so a test can assert on rejected requests too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fake_upstream import accounts, control, oauth
from tests.fake_upstream.answers import build_answer, tokens_of
from tests.fake_upstream.errors import FakeApiError, error_response
from tests.fake_upstream.faults import fault_response
from tests.fake_upstream.rules import (
    Caller,
    authenticate,
    check_body,
    check_identity,
    check_version,
    presented,
)
from tests.fake_upstream.scenarios import Scenario, parse
from tests.fake_upstream.state import CLAUDE_CLI_CLIENT_ID, FakeState, RequestRecord
from tests.fake_upstream.streaming import TimedResponse, stream_events

MAX_BODY_BYTES = 32 * 1024 * 1024
#: Newest first, like the real API; claude-fable-5-2 is one the packaged models.json lacks.
MODELS = [
    ("claude-fable-5-2", "Claude Fable 5.2", "2026-11-19T00:00:00Z"),
    ("claude-opus-5-5", "Claude Opus 5.5", "2026-10-01T00:00:00Z"),
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-01T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
]

Handler = Callable[[Request, RequestRecord, dict[str, str]], Awaitable[Response]]


WINDOW_HEADER = {"five_hour": "5h", "seven_day": "7d", "seven_day_opus": "7d_opus", "seven_day_sonnet": "7d_sonnet"}


def ratelimit_headers(caller: Caller, spent: tuple[str, int] | None = None) -> dict[str, str]:
    """The ``anthropic-ratelimit-unified-*`` headers subscription answers carry; ``spent``:
    (window, seconds to reset) of a quota that is used up."""
    if caller.kind != "oauth":
        return {}
    now = int(time.time())
    resets = {"5h": now + 3 * 3600, "7d": now + 4 * 86400}
    utilization = {"5h": "0.12", "7d": "0.34"}
    status = {"5h": "allowed", "7d": "allowed"}
    claim = "five_hour"
    if spent is not None:
        claim, seconds = spent
        key = WINDOW_HEADER.get(claim, claim)
        resets[key], utilization[key], status[key] = now + seconds, "1.0", "rejected"
    headers = {
        "anthropic-ratelimit-unified-status": "rejected" if spent else "allowed",
        "anthropic-ratelimit-unified-reset": str(resets[WINDOW_HEADER.get(claim, claim)]),
        "anthropic-ratelimit-unified-representative-claim": claim,
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    }
    for key in resets:
        headers[f"anthropic-ratelimit-unified-{key}-status"] = status[key]
        headers[f"anthropic-ratelimit-unified-{key}-reset"] = str(resets[key])
        headers[f"anthropic-ratelimit-unified-{key}-utilization"] = utilization[key]
    return headers


async def _record(request: Request) -> tuple[RequestRecord, bytes]:
    state: FakeState = request.app.state.fake
    raw = await request.body()
    record = RequestRecord(
        id=state.next_id("req"),
        method=request.method,
        path=request.url.path,
        query=dict(request.query_params),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=None,
        body_bytes=len(raw),
        received_at=time.time(),
        client_port=request.client.port if request.client else None,
    )
    state.records.append(record)
    return record, raw


def api_route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Record, then run ``handler``; a FakeApiError becomes the upstream's error answer."""

    async def endpoint(request: Request) -> Response:
        record, raw = await _record(request)
        try:
            if len(raw) > request.app.state.max_body_bytes:
                raise FakeApiError(413)
            if raw:
                try:
                    record.body = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise FakeApiError(400, f"There was an error parsing the body: {exc}") from exc
            response = await handler(request, record, record.headers)
        except FakeApiError as exc:
            record.status, record.outcome, record.finished_at = exc.status, "completed", time.time()
            return error_response(exc.status, exc.message, exc.error_type, exc.headers, record.id)
        if not isinstance(response, TimedResponse):
            record.status, record.outcome, record.finished_at = response.status_code, "completed", time.time()
        return response

    return endpoint


def _caller(request: Request, record: RequestRecord, headers: dict[str, str]) -> Caller:
    record.auth = presented(headers)
    caller = authenticate(request.app.state.fake, headers)
    record.auth = caller.describe()
    check_version(headers)
    return caller


def _body(record: RequestRecord) -> dict[str, Any]:
    if not isinstance(record.body, dict):
        raise FakeApiError(400, "The request body must be a JSON object")
    return record.body


def _scenario_error(scenario: Scenario, caller: Caller) -> FakeApiError:
    if scenario.quota is not None:
        headers = ratelimit_headers(caller, scenario.quota) | {"retry-after": str(scenario.quota[1])}
        return FakeApiError(429, "This request would exceed your account's rate limit. Please try again later.",
                            headers=headers)
    status = scenario.error_status or 500
    headers = ratelimit_headers(caller)
    if status == 429:
        headers["retry-after"] = str(scenario.retry_after)
    return FakeApiError(status, headers=headers)


async def messages(request: Request, record: RequestRecord, headers: dict[str, str]) -> Response:
    caller = _caller(request, record, headers)
    body = _body(record)
    check_body(body)
    if caller.kind == "oauth":
        check_identity(body)
    scenario = parse(body)
    accounts.per_account(request, scenario, caller)
    fault = fault_response(scenario, headers, record.id)
    if fault is not None:
        return fault
    if scenario.error_status or scenario.quota:
        raise _scenario_error(scenario, caller)
    state: FakeState = request.app.state.fake
    answer = build_answer(state, body, scenario, {
        "method": record.method, "path": record.path, "query": record.query, "headers": headers,
    })
    out_headers = {"request-id": record.id, "anthropic-organization-id": f"org-{caller.account or 'apikey'}"}
    out_headers |= ratelimit_headers(caller)
    if body.get("stream") is True:
        events = list(stream_events(answer, midstream_error=scenario.midstream_error))
        return TimedResponse(
            200,
            out_headers | {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"},
            events,
            record,
            delay=scenario.slow,
            hang_before_headers=scenario.hang,
            hang_after=1 if scenario.stall else None,
            hold_after=state.holds.setdefault(record.id, asyncio.Event()) if scenario.hold else None,
            total=len(events),
        )
    payload = orjson.dumps(answer.message())
    if scenario.slow or scenario.hang:
        return TimedResponse(
            200, out_headers | {"content-type": "application/json"}, [payload], record,
            delay=scenario.slow, hang_before_headers=scenario.hang, total=1,
        )
    return Response(payload, media_type="application/json", headers=out_headers)


async def count_tokens(request: Request, record: RequestRecord, headers: dict[str, str]) -> Response:
    _caller(request, record, headers)
    body = _body(record)
    check_body(body, count_tokens=True)
    counted = {k: body.get(k) for k in ("system", "messages", "tools") if body.get(k) is not None}
    return JSONResponse({"input_tokens": tokens_of(counted)}, headers={"request-id": record.id})


def _model(model_id: str, name: str, created: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": name, "created_at": created}


async def list_models(request: Request, record: RequestRecord, headers: dict[str, str]) -> Response:
    _caller(request, record, headers)
    data = [_model(*m) for m in MODELS]
    after = request.query_params.get("after_id")
    if after:
        ids = [m["id"] for m in data]
        data = data[ids.index(after) + 1:] if after in ids else []
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise FakeApiError(400, "limit: must be an integer") from None
    if not 1 <= limit <= 1000:
        raise FakeApiError(400, "limit: must be between 1 and 1000")
    page, has_more = data[:limit], len(data) > limit
    return JSONResponse(
        {
            "data": page, "has_more": has_more,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None,
        },
        headers={"request-id": record.id},
    )


async def get_model(request: Request, record: RequestRecord, headers: dict[str, str]) -> Response:
    _caller(request, record, headers)
    for m in MODELS:
        if m[0] == request.path_params["model_id"]:
            return JSONResponse(_model(*m), headers={"request-id": record.id})
    raise FakeApiError(404, f"model: {request.path_params['model_id']}")


async def root(request: Request) -> Response:
    # Older Claude Code versions send HEAD to the base URL first.
    return Response(status_code=200)


def create_app(
    state: FakeState | None = None,
    *,
    state_file: Path | None = None,
    client_id: str = CLAUDE_CLI_CLIENT_ID,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", root, methods=["GET", "HEAD"]),
            Route("/v1/messages", api_route(messages), methods=["POST"]),
            Route("/v1/messages/count_tokens", api_route(count_tokens), methods=["POST"]),
            Route("/v1/models", api_route(list_models), methods=["GET"]),
            Route("/v1/models/{model_id}", api_route(get_model), methods=["GET"]),
            Route("/oauth/authorize", oauth.authorize, methods=["GET"]),
            Route("/v1/oauth/token", oauth.token, methods=["POST"]),
            *control.routes,
        ],
        # Like api.anthropic.com (behind Cloudflare): JSON answers are gzip-compressed when the
        # client accepts it; event streams are not.
        middleware=[Middleware(GZipMiddleware, minimum_size=200)],
    )
    app.state.fake = state or FakeState(state_file, client_id)
    app.state.max_body_bytes = max_body_bytes
    return app
