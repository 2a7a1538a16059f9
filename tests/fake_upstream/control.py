"""``/_fake/*``: what tests use to set the fake up and to see what it received.

Not part of the Anthropic API: a proxy never calls these.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fake_upstream.state import FakeState


def _state(request: Request) -> FakeState:
    return request.app.state.fake  # type: ignore[no-any-return]


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    data = orjson.loads(raw) if raw.strip() else {}
    return data if isinstance(data, dict) else {}


async def credentials(request: Request) -> Response:
    """``{"expired", "expires_in", "revoked", "refresh_valid", "refresh_delay",
    "refresh_expires_in", "subscription_type"}`` -> a ``claudeAiOauth`` object."""
    opts = await _json(request)
    issued = _state(request).issue_credentials(
        expired=bool(opts.get("expired", False)),
        expires_in=opts.get("expires_in"),
        revoked=bool(opts.get("revoked", False)),
        refresh_valid=bool(opts.get("refresh_valid", True)),
        refresh_delay=float(opts.get("refresh_delay", 0.0)),
        refresh_expires_in=int(opts.get("refresh_expires_in", 8 * 3600)),
        subscription_type=str(opts.get("subscription_type", "max")),
    )
    return JSONResponse(issued)


async def api_key(request: Request) -> Response:
    return JSONResponse({"apiKey": _state(request).issue_api_key()})


async def revoke(request: Request) -> Response:
    opts = await _json(request)
    return JSONResponse({"revoked": _state(request).revoke(str(opts.get("accessToken", "")))})


async def requests(request: Request) -> Response:
    records = _state(request).records
    path = request.query_params.get("path")
    fp = request.query_params.get("fingerprint")
    out = [
        r.to_json()
        for r in records
        if (path is None or r.path == path) and (fp is None or (r.auth or {}).get("fingerprint") == fp)
    ]
    return JSONResponse(out)


async def one_request(request: Request) -> Response:
    wanted = request.path_params["request_id"]
    for record in _state(request).records:
        if record.id == wanted:
            return JSONResponse(record.to_json())
    return JSONResponse({"error": "unknown request id"}, status_code=404)


async def token_calls(request: Request) -> Response:
    return JSONResponse(_state(request).token_calls)


async def reset(request: Request) -> Response:
    opts = await _json(request)
    _state(request).reset(credentials=bool(opts.get("credentials", False)))
    return JSONResponse({"ok": True})


async def release(request: Request) -> Response:
    """Let a ``[[fake:hold]]`` stream go on (one created on a later request id is released too)."""
    import asyncio

    _state(request).holds.setdefault(request.path_params["request_id"], asyncio.Event()).set()
    return JSONResponse({"released": request.path_params["request_id"]})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


routes = [
    Route("/_fake/health", health, methods=["GET"]),
    Route("/_fake/credentials", credentials, methods=["POST"]),
    Route("/_fake/api_keys", api_key, methods=["POST"]),
    Route("/_fake/revoke", revoke, methods=["POST"]),
    Route("/_fake/requests", requests, methods=["GET"]),
    Route("/_fake/requests/{request_id}", one_request, methods=["GET"]),
    Route("/_fake/release/{request_id}", release, methods=["POST"]),
    Route("/_fake/token_calls", token_calls, methods=["GET"]),
    Route("/_fake/reset", reset, methods=["POST"]),
]
