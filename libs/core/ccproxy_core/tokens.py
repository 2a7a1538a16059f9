"""The credential the forwarder puts on an upstream request, from a :class:`TokenSource` (auth's
manager in process, an HTTP client of auth in the stack)."""

from __future__ import annotations

import time
from typing import Literal, Protocol

from pydantic import BaseModel, SecretStr

#: The account of a single-account setup (``ccproxy auth login`` with no ``--account``).
DEFAULT_ACCOUNT = "default"


class Credential(BaseModel):
    kind: Literal["oauth", "api_key"]
    secret: SecretStr
    #: Epoch seconds; None for API keys, which do not expire.
    expires_at: float | None = None
    account: str = DEFAULT_ACCOUNT

    def expires_within(self, seconds: float) -> bool:
        return self.expires_at is not None and self.expires_at - time.time() < seconds


class CredentialStatus(BaseModel):
    available: bool
    kind: str | None = None
    source: str | None = None
    account: str | None = None
    expires_at: float | None = None
    subscription_type: str | None = None
    detail: str | None = None


class TokenSource(Protocol):
    async def get(self, *, rejected: str | None = None) -> Credential:
        """``rejected``: a secret the upstream just refused (401): refresh unless already replaced."""
        ...

    async def status(self) -> CredentialStatus: ...
