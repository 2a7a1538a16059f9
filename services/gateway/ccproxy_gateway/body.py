"""Reading a client's JSON body: size-capped, content-type checked, clear 4xx on bad input."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from ccproxy_core.errors import ProxyError
from ccproxy_core.models import check_token_limit

MAX_DEPTH = 255


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.split(";")[0].lower():
        raise ProxyError(415, f"Content-Type must be application/json, not {content_type!r}")
    too_large = ProxyError(413, f"request body is larger than the limit of {max_bytes} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    raw = bytearray()  # grows in place: a big body in many chunks is not copied over and over
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_bytes:
                raise too_large
    except ClientDisconnect as exc:  # gone, or cut off by the server's body timeout: nobody to answer
        raise ProxyError(499, "the client went away while sending the body") from exc
    if not raw:
        raise ProxyError(400, "request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProxyError(400, f"request body must be a JSON object, not {type(data).__name__}")
    # orjson reads JSON nested up to 1024 levels but writes at most 255, and every body is written
    # again (upstream, to a worker): a deeper one is the client's 400 here, not a 500 later. Writing
    # is the exact test, and cheap (a sixth of the parse); a body under 2 x 255 bytes cannot be.
    if len(raw) > 2 * MAX_DEPTH:
        try:
            orjson.dumps(data)
        except orjson.JSONEncodeError as exc:
            raise ProxyError(400, f"request body is nested too deeply: at most {MAX_DEPTH} levels") from exc
    return data


def validate_messages_request(body: dict[str, Any], count_tokens: bool = False) -> None:
    """Check only what ccproxy itself relies on (``max_tokens``: what a budget reserves, up to the
    model's output limit); everything else passes through untouched."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "model: a model name is required", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ProxyError(400, "messages: a list of messages is required", param="messages")
    if not count_tokens and "max_tokens" in body:
        check_token_limit(body["max_tokens"], model)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ProxyError(400, "stream: must be a boolean", param="stream")
