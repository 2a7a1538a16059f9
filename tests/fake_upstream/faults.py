"""Hostile error answers (issue 13): an upstream that echoes the credential it was sent, and one
whose error body is huge.

- ``[[fake:echo_credential]]``: 401 whose message holds the presented credential whole, its
  first 20 and its last 12 characters (as a careless upstream or a proxy in between might).
- ``[[fake:huge_error=BYTES]]``: 500 with an Anthropic error body whose message is BYTES long.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

from tests.fake_upstream.errors import error_response
from tests.fake_upstream.scenarios import Scenario


def credential_of(headers: dict[str, str]) -> str:
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def fault_response(scenario: Scenario, headers: dict[str, str], request_id: str) -> Response | None:
    """The hostile answer a marker asks for, or None."""
    if "echo_credential" in scenario.extra:
        secret = credential_of(headers)
        message = f"invalid credential {secret} (starts {secret[:20]}, ends {secret[-12:]})"
        return error_response(401, message, request_id=request_id)
    if "huge_error" in scenario.extra:
        size = int(scenario.extra["huge_error"] or 50_000_000)
        body = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": "x" * size}})
        return Response(body, status_code=500, media_type="application/json", headers={"request-id": request_id})
    return None
