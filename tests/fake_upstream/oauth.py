"""The OAuth side: a fake authorize step and the token endpoint of the Claude CLI's client.

``GET /oauth/authorize`` (what claude.ai does after the user agrees) redirects straight to
``redirect_uri?code=...&state=...``; ``POST /v1/oauth/token`` takes JSON bodies for
``authorization_code`` (PKCE S256 checked) and ``refresh_token`` (rotating: each refresh token
works once). Every token call is recorded for ``GET /_fake/token_calls``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from tests.fake_upstream.state import DEFAULT_TOKEN_LIFETIME, AuthCode, FakeState, fingerprint


def oauth_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def authorize(request: Request) -> Response:
    state: FakeState = request.app.state.fake
    q = request.query_params
    missing = [k for k in ("client_id", "redirect_uri", "code_challenge", "state") if not q.get(k)]
    if missing:
        return oauth_error(400, "invalid_request", f"missing {', '.join(missing)}")
    if q.get("client_id") != state.client_id:
        return oauth_error(400, "invalid_client", "unknown client_id")
    if q.get("code_challenge_method", "S256") != "S256" or q.get("response_type", "code") != "code":
        return oauth_error(400, "invalid_request", "only response_type=code with PKCE S256 is supported")
    code = AuthCode(
        code="fake-code-" + secrets.token_urlsafe(24),
        challenge=q["code_challenge"],
        method="S256",
        redirect_uri=q["redirect_uri"],
        client_id=q["client_id"],
        state=q["state"],
        scope=q.get("scope", ""),
    )
    state.codes[code.code] = code
    separator = "&" if "?" in code.redirect_uri else "?"
    target = code.redirect_uri + separator + urlencode({"code": code.code, "state": code.state})
    return RedirectResponse(target, status_code=302)


async def token(request: Request) -> Response:
    state: FakeState = request.app.state.fake
    call: dict[str, Any] = {"at": time.time()}
    state.token_calls.append(call)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        call.update(status=400, error="invalid_request")
        return oauth_error(400, "invalid_request", "the body must be a JSON object")
    grant = body.get("grant_type")
    call["grant_type"] = grant
    if body.get("client_id") != state.client_id:
        call.update(status=400, error="invalid_client")
        return oauth_error(400, "invalid_client", "unknown client_id")
    if grant == "refresh_token":
        return await _refresh(state, body, call)
    if grant == "authorization_code":
        return _exchange(state, body, call)
    call.update(status=400, error="unsupported_grant_type")
    return oauth_error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")


async def _refresh(state: FakeState, body: dict[str, Any], call: dict[str, Any]) -> Response:
    refresh_token = str(body.get("refresh_token") or "")
    call["refresh_token"] = refresh_token
    call["refresh_fingerprint"] = fingerprint(refresh_token)
    known = state.refresh.get(refresh_token)
    if known is not None and known.delay:
        await asyncio.sleep(known.delay)
    _old, answer, error = state.rotate(refresh_token)
    if answer is None:
        call.update(status=400, error="invalid_grant")
        return oauth_error(400, "invalid_grant", error)
    call.update(status=200, access_token=answer["access_token"], new_refresh_token=answer["refresh_token"])
    return JSONResponse(answer)


def _exchange(state: FakeState, body: dict[str, Any], call: dict[str, Any]) -> Response:
    code = state.codes.get(str(body.get("code") or ""))
    call["code"] = body.get("code")
    problem = None
    if code is None or code.used:
        problem = "invalid or already used authorization code"
    elif body.get("redirect_uri") != code.redirect_uri:
        problem = "redirect_uri does not match the authorize request"
    elif s256(str(body.get("code_verifier") or "")) != code.challenge:
        problem = "code_verifier does not match the code_challenge"
    elif body.get("state") is not None and body.get("state") != code.state:
        problem = "state does not match"
    elif time.time() - code.issued_at > 600:
        problem = "authorization code expired"
    if problem is not None or code is None:
        call.update(status=400, error="invalid_grant")
        return oauth_error(400, "invalid_grant", problem or "invalid code")
    code.used = True
    answer = state.token_answer(state.next_id("acct"), DEFAULT_TOKEN_LIFETIME)
    call.update(status=200, access_token=answer["access_token"], new_refresh_token=answer["refresh_token"])
    return JSONResponse(answer)
