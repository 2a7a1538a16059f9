"""The credential the forwarder puts on an upstream request (auth hands it out), and its status."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, SecretStr

#: The account of a single-account setup (``ccproxy auth login`` with no ``--account``).
DEFAULT_ACCOUNT = "default"
STATUS_PATH = "/internal/status"


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

