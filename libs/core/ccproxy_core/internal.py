"""Internal service-to-service calls carry a shared secret in one header."""

from __future__ import annotations

import hmac

INTERNAL_SECRET_HEADER = "x-ccproxy-internal-secret"


def check_internal_secret(expected: str | None, presented: str | None) -> bool:
    """Constant-time check; with no secret configured, internal calls are refused."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
