"""What the fake remembers: credentials it issued, refresh-token rotation, OAuth codes, every
request it received, and every call to its token endpoint.

Credentials can be persisted to a state file (``--state-file``) so a restarted fake still knows
the tokens a test wrote into a ``.credentials.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The Claude CLI's public OAuth client.
CLAUDE_CLI_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
DEFAULT_TOKEN_LIFETIME = 8 * 3600


def fingerprint(secret: str) -> str:
    """A stable stand-in for a secret, safe to show in answers and logs."""
    return "fp:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass
class AccessToken:
    token: str
    expires_at: float
    account: str
    revoked: bool = False
    subscription_type: str = "max"


@dataclass
class RefreshToken:
    token: str
    account: str
    #: Each refresh token works exactly once.
    used: bool = False
    #: False: the token endpoint refuses it (invalid_grant), e.g. a revoked login.
    valid: bool = True
    #: Seconds the token endpoint waits before answering (widens race windows in tests).
    delay: float = 0.0
    #: Lifetime of the access token the next refresh issues.
    expires_in: int = DEFAULT_TOKEN_LIFETIME
    subscription_type: str = "max"


@dataclass
class AuthCode:
    code: str
    challenge: str
    method: str
    redirect_uri: str
    client_id: str
    state: str
    scope: str
    used: bool = False
    issued_at: float = field(default_factory=time.time)


@dataclass
class RequestRecord:
    id: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    body_bytes: int
    received_at: float
    #: The client's source port: the same port on two requests means a reused connection.
    client_port: int | None = None
    #: kind and fingerprint of the credential the request carried, if any.
    auth: dict[str, str] | None = None
    status: int | None = None
    #: pending -> streaming -> completed | disconnected | error
    outcome: str = "pending"
    events_sent: int = 0
    events_total: int | None = None
    first_event_at: float | None = None
    last_event_at: float | None = None
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FakeState:
    def __init__(self, state_file: Path | None = None, client_id: str = CLAUDE_CLI_CLIENT_ID) -> None:
        self.state_file = state_file
        self.client_id = client_id
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.api_keys: set[str] = set()
        self.codes: dict[str, AuthCode] = {}
        self.records: list[RequestRecord] = []
        self.token_calls: list[dict[str, Any]] = []
        #: Cache prefixes seen (hash -> tokens), for cache_creation vs cache_read usage.
        self.cache_prefixes: dict[str, int] = {}
        #: Held streams (``[[fake:hold]]``) by request id, released by ``POST /_fake/release/{id}``.
        self.holds: dict[str, asyncio.Event] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self.load()

    # -- ids ---------------------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            n = self._counter
        return f"{prefix}_fake{n:06d}{secrets.token_hex(6)}"

    # -- credentials -------------------------------------------------------------------

    def issue_credentials(
        self,
        *,
        expired: bool = False,
        expires_in: int | None = None,
        revoked: bool = False,
        refresh_valid: bool = True,
        refresh_delay: float = 0.0,
        refresh_expires_in: int = DEFAULT_TOKEN_LIFETIME,
        subscription_type: str = "max",
        account: str | None = None,
    ) -> dict[str, Any]:
        """A ``claudeAiOauth`` object, ready to be written into ``.credentials.json``."""
        account = account or self.next_id("acct")
        lifetime = -3600 if expired else (expires_in if expires_in is not None else DEFAULT_TOKEN_LIFETIME)
        access = self._new_access(account, lifetime, subscription_type)
        access.revoked = revoked
        refresh = RefreshToken(
            token="sk-ant-ort01-fake-" + secrets.token_urlsafe(32),
            account=account,
            valid=refresh_valid,
            delay=refresh_delay,
            expires_in=refresh_expires_in,
            subscription_type=subscription_type,
        )
        self.refresh[refresh.token] = refresh
        self.save()
        return {
            "accessToken": access.token,
            "refreshToken": refresh.token,
            "expiresAt": int(access.expires_at * 1000),
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": subscription_type,
        }

    def _new_access(self, account: str, lifetime: float, subscription_type: str) -> AccessToken:
        access = AccessToken(
            token="sk-ant-oat01-fake-" + secrets.token_urlsafe(32),
            expires_at=time.time() + lifetime,
            account=account,
            subscription_type=subscription_type,
        )
        self.access[access.token] = access
        return access

    def issue_api_key(self) -> str:
        key = "sk-ant-api03-fake-" + secrets.token_urlsafe(32)
        self.api_keys.add(key)
        self.save()
        return key

    def revoke(self, access_token: str) -> bool:
        found = self.access.get(access_token)
        if found is None:
            return False
        found.revoked = True
        self.save()
        return True

    def rotate(self, refresh_token: str) -> tuple[RefreshToken | None, dict[str, Any] | None, str]:
        """Exchange a refresh token for a new pair. Returns (old, answer, error)."""
        with self._lock:
            old = self.refresh.get(refresh_token)
            if old is None or not old.valid:
                return old, None, "Refresh token not found or invalid"
            if old.used:
                return old, None, "Refresh token has already been used"
            old.used = True
        answer = self.token_answer(old.account, old.expires_in, old.subscription_type)
        return old, answer, ""

    def token_answer(self, account: str, expires_in: int, subscription_type: str = "max") -> dict[str, Any]:
        access = self._new_access(account, expires_in, subscription_type)
        refresh = RefreshToken(
            token="sk-ant-ort01-fake-" + secrets.token_urlsafe(32),
            account=account,
            expires_in=expires_in,
            subscription_type=subscription_type,
        )
        self.refresh[refresh.token] = refresh
        self.save()
        return {
            "token_type": "Bearer",
            "access_token": access.token,
            "refresh_token": refresh.token,
            "expires_in": expires_in,
            "scope": "user:inference user:profile",
            "organization": {"uuid": f"org-{account}", "name": "Fake Org"},
            "account": {"uuid": account, "email_address": f"{account}@example.com"},
        }

    # -- persistence -------------------------------------------------------------------

    def save(self) -> None:
        if self.state_file is None:
            return
        doc = {
            "access": {k: asdict(v) for k, v in self.access.items()},
            "refresh": {k: asdict(v) for k, v in self.refresh.items()},
            "api_keys": sorted(self.api_keys),
        }
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.state_file)

    def load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        doc = json.loads(self.state_file.read_text())
        self.access = {k: AccessToken(**v) for k, v in doc.get("access", {}).items()}
        self.refresh = {k: RefreshToken(**v) for k, v in doc.get("refresh", {}).items()}
        self.api_keys = set(doc.get("api_keys", []))

    # -- records -----------------------------------------------------------------------

    def reset(self, credentials: bool = False) -> None:
        self.records.clear()
        self.token_calls.clear()
        self.cache_prefixes.clear()
        if credentials:
            self.access.clear()
            self.refresh.clear()
            self.api_keys.clear()
            self.codes.clear()
            self.save()
