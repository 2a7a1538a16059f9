"""The OAuth token endpoint of the Claude CLI's public client (refresh and code exchange)."""

from __future__ import annotations

import time

import aiohttp
from pydantic import BaseModel

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
    payload = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": settings.client_id,
    }
    return await _post(settings.token_url, payload)


async def exchange_code(
    settings: OAuthSettings, code: str, state: str, verifier: str, redirect_uri: str
) -> TokenResponse:
    payload = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": settings.client_id,
        "code_verifier": verifier,
        "state": state,
    }
    return await _post(settings.token_url, payload)


async def _post(url: str, payload: dict[str, str]) -> TokenResponse:
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url, json=payload) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    reason = body.get("error") if isinstance(body, dict) else None
                    raise OAuthError(
                        f"token endpoint answered {resp.status} ({reason or 'no reason'})", refused=resp.status < 500
                    )
                return TokenResponse.model_validate(body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise OAuthError(f"token endpoint unreachable: {type(exc).__name__}") from exc
    except ValueError as exc:
        raise OAuthError("token endpoint answered something that is not a token") from exc
