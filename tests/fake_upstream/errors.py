"""Error answers exactly as the Anthropic API shapes them."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request (fake upstream).",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your account does not have permission to use the specified resource.",
    404: "Not found.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "This request would exceed your account's rate limit. Please try again later.",
    500: "Internal server error",
    504: "Request timed out.",
    529: "Overloaded",
}


def error_body(status: int, message: str | None = None, error_type: str | None = None,
               request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "error",
        "error": {
            "type": error_type or ERROR_TYPES.get(status, "api_error"),
            "message": message or DEFAULT_MESSAGES.get(status, "Error"),
        },
    }
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(status: int, message: str | None = None, error_type: str | None = None,
                   headers: dict[str, str] | None = None, request_id: str | None = None) -> Response:
    all_headers = dict(headers or {})
    if request_id:
        all_headers["request-id"] = request_id
    if status in (429, 500, 529):
        all_headers.setdefault("x-should-retry", "true")
    return Response(
        orjson.dumps(error_body(status, message, error_type, request_id)),
        status_code=status,
        media_type="application/json",
        headers=all_headers,
    )


class FakeApiError(Exception):
    """Raised while checking a request; rendered with :func:`error_response`."""

    def __init__(self, status: int, message: str | None = None, error_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message or DEFAULT_MESSAGES.get(status, "Error"))
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers or {}
