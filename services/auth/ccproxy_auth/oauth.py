"""OAuth with the Claude CLI's public client: logging in (PKCE, S256) and refreshing tokens. A login comes back
to a local callback server on the redirect URI's port or, where no browser can reach this machine (a server, a
container), by the manual flow: the page shows ``code#state`` and the user pastes it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from pydantic import BaseModel

from ccproxy_auth.accounts import ClaudeOAuth
from ccproxy_core.settings import OAuthSettings


class OAuthError(Exception):
    """The token endpoint refused or could not be reached. The message holds no secret.
    ``refused``: it answered and said no (a dead refresh token), rather than being unreachable."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str | None = None
    expires_in: int = 28800
    scope: str | None = None

    def expires_at_ms(self) -> int:
        return int((time.time() + self.expires_in) * 1000)


async def refresh(settings: OAuthSettings, refresh_token: str) -> TokenResponse:
    return await _post(settings, {"grant_type": "refresh_token", "refresh_token": refresh_token})


async def _post(settings: OAuthSettings, grant: dict[str, str]) -> TokenResponse:
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(settings.token_url, json={**grant, "client_id": settings.client_id}) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    reason = body.get("error") if isinstance(body, dict) else None
                    why = f"token endpoint answered {resp.status} ({reason or 'no reason'})"
                    raise OAuthError(why, refused=resp.status < 500)
                return TokenResponse.model_validate(body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise OAuthError(f"token endpoint unreachable: {type(exc).__name__}") from exc
    except ValueError as exc:
        raise OAuthError("token endpoint answered something that is not a token") from exc


class LoginError(Exception):
    """The login did not complete; the message says why (never a code or token)."""


@dataclass(frozen=True, slots=True)
class PendingLogin:
    verifier: str
    state: str
    redirect_uri: str
    url: str


def start(settings: OAuthSettings, manual: bool = False) -> PendingLogin:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(32)
    redirect_uri = settings.manual_redirect_uri if manual else settings.redirect_uri
    query = {"code": "true", "client_id": settings.client_id, "response_type": "code", "redirect_uri": redirect_uri,
             "scope": settings.scopes, "code_challenge": challenge, "code_challenge_method": "S256", "state": state}
    return PendingLogin(verifier, state, redirect_uri, f"{settings.authorize_url}?{urlencode(query)}")


def parse_pasted(pasted: str, pending: PendingLogin) -> str:
    """``code#state`` from the manual flow's page; the state must be ours (no CSRF)."""
    code, sep, state = pasted.strip().partition("#")
    if not code:
        raise LoginError("nothing pasted: copy the whole code shown after you authorize")
    if sep and state != pending.state:
        raise LoginError("the pasted code belongs to another login attempt (state mismatch); start again")
    return code


async def wait_for_callback(pending: PendingLogin, wait: float = 300.0) -> str:
    """Serve the redirect URI on its own port until the browser comes back with the code."""
    parts = urlsplit(pending.redirect_uri)
    port = parts.port or 80
    loop = asyncio.get_running_loop()
    result: asyncio.Future[str] = loop.create_future()

    async def callback(request: web.Request) -> web.Response:
        q = request.query
        if q.get("error"):
            if not result.done():
                result.set_exception(LoginError(f"authorization refused: {q.get('error')}"))
            return web.Response(text="Login refused. You can close this tab.", status=400)
        if q.get("state") != pending.state or not q.get("code"):
            return web.Response(text="Unexpected login callback (state mismatch).", status=400)
        if not result.done():
            result.set_result(q["code"])
        return web.Response(text="ccproxy: login complete. You can close this tab.")

    app = web.Application()
    app.router.add_get(parts.path or "/", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    bind = parts.hostname if parts.hostname not in (None, "localhost", "127.0.0.1") else "127.0.0.1"
    site = web.TCPSite(runner, bind, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise LoginError(
            f"cannot listen on {bind}:{port} for the login callback ({exc.strerror}); "
            "free the port or use --manual"
        ) from exc
    try:
        return await asyncio.wait_for(result, wait)
    except TimeoutError as exc:
        raise LoginError(f"no login callback within {wait:.0f} s; try again or use --manual") from exc
    finally:
        await runner.cleanup()


async def finish(settings: OAuthSettings, pending: PendingLogin, code: str) -> ClaudeOAuth:
    """Exchange the code (with our PKCE verifier) for a token pair."""
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
             "code_verifier": pending.verifier, "state": pending.state}
    try:
        answer = await _post(settings, grant)
    except OAuthError as exc:
        raise LoginError(f"the code exchange failed: {exc}") from exc
    scopes = (answer.scope or settings.scopes).split()
    return ClaudeOAuth.model_validate({"access_token": answer.access_token, "refresh_token": answer.refresh_token,
                                       "expires_at": answer.expires_at_ms(), "scopes": scopes})
