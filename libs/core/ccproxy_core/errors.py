"""Errors: a :class:`ProxyError` carries a status and an Anthropic error type, rendered in the
format the client spoke (Anthropic's or OpenAI's)."""

from __future__ import annotations

import re
from typing import Literal

import orjson
from pydantic import ValidationError

ClientFormat = Literal["anthropic", "openai"]


def path_format(path: str) -> ClientFormat:
    """The error format of a request no route answers (a matched route says its own): OpenAI's
    under the OpenAI endpoints' names, else Anthropic's."""
    openai = path.endswith(("/chat/completions", "/responses")) or "/responses/" in path
    return "openai" if openai else "anthropic"

ANTHROPIC_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 415: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}

#: OpenAI error type for each Anthropic error type OpenAI names otherwise (the rest share the name).
OPENAI_TYPE_BY_ANTHROPIC: dict[str, str] = {
    "billing_error": "insufficient_quota", "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_exceeded", "timeout_error": "timeout", "api_error": "server_error",
    "overloaded_error": "server_error",
}


class ProxyError(Exception):
    def __init__(
        self, status: int, message: str, error_type: str | None = None, headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or ANTHROPIC_TYPE_BY_STATUS.get(status, "api_error")
        self.headers = headers or {}
        self.param = param


def anthropic_error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def render_error(error: ProxyError, fmt: ClientFormat) -> bytes:
    if fmt == "anthropic":
        return anthropic_error_body(error.error_type, error.message)
    openai_type = OPENAI_TYPE_BY_ANTHROPIC.get(error.error_type, error.error_type)
    return orjson.dumps({"error": {"message": error.message, "type": openai_type, "param": error.param,
                                   "code": error.error_type}})


#: Location parts pydantic adds for the branches of a union: not field names a client knows.
_UNION_BRANCH = re.compile(
    r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*|tagged-union\[.*\])$"
)


def validation_error(exc: ValidationError, prefix: str = "") -> ProxyError:
    """A 400 naming the invalid field; of a union's failed branches, the deepest is the one meant."""
    best = max(exc.errors(), key=lambda e: len(e["loc"]))
    parts = [str(p) for p in (prefix, *best["loc"]) if p != "" and not _UNION_BRANCH.match(str(p))]
    where = ".".join(parts)
    message = f"{where}: {best['msg']}" if where else str(best["msg"])
    return ProxyError(400, message, param=where or None)


def upstream_error(status: int, body: bytes, headers: dict[str, str]) -> ProxyError:
    """The upstream's error answer as a ProxyError, status and ``retry-after`` kept."""
    parsed = parse_anthropic_error(body)
    error_type, message = parsed or (ANTHROPIC_TYPE_BY_STATUS.get(status, "api_error"), f"upstream answered {status}")
    kept = {k: v for k, v in headers.items() if k.lower() == "retry-after"}
    return ProxyError(status, message, error_type, headers=kept)


def parse_anthropic_error(body: bytes) -> tuple[str, str] | None:
    try:
        data = orjson.loads(body)
        err = data["error"]
        return str(err["type"]), str(err["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
