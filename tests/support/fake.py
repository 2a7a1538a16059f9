"""A client for the fake upstream's control endpoints (``/_fake/*``)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from tests.fake_upstream.state import fingerprint
from tests.support.process import Proc


class FakeUpstream:
    """The fake upstream as a test sees it."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.url = proc.url

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        req = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())

    def credentials(self, expired: bool = False, **options: Any) -> dict[str, Any]:
        """A fresh ``claudeAiOauth`` object (accessToken, refreshToken, expiresAt ms, ...).
        Options: expires_in, revoked, refresh_valid, refresh_delay, refresh_expires_in,
        subscription_type."""
        return self._call("POST", "/_fake/credentials", {"expired": expired, **options})  # type: ignore[no-any-return]

    def api_key(self) -> str:
        return str(self._call("POST", "/_fake/api_keys")["apiKey"])

    def revoke(self, access_token: str) -> bool:
        return bool(self._call("POST", "/_fake/revoke", {"accessToken": access_token})["revoked"])

    def requests(self, path: str | None = None, token: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests, oldest first; filtered by path and/or the credential they carried."""
        query = []
        if path:
            query.append(f"path={urllib.parse.quote(path)}")
        if token:
            query.append(f"fingerprint={urllib.parse.quote(fingerprint(token))}")
        return self._call("GET", "/_fake/requests" + ("?" + "&".join(query) if query else ""))  # type: ignore[no-any-return]

    def request(self, request_id: str) -> dict[str, Any]:
        return self._call("GET", f"/_fake/requests/{request_id}")  # type: ignore[no-any-return]

    def release(self, request_id: str) -> None:
        """Let a ``[[fake:hold]]`` stream go on past its ``message_start``."""
        self._call("POST", f"/_fake/release/{request_id}")

    def token_calls(self, refresh_token: str | None = None) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self._call("GET", "/_fake/token_calls")
        if refresh_token is not None:
            calls = [c for c in calls if c.get("refresh_token") == refresh_token]
        return calls

    def reset(self) -> None:
        self._call("POST", "/_fake/reset")

    @staticmethod
    def fingerprint(secret: str) -> str:
        return fingerprint(secret)

    @property
    def token_url(self) -> str:
        return self.url + "/v1/oauth/token"

    @property
    def authorize_url(self) -> str:
        return self.url + "/oauth/authorize"
