"""One access-log event per client API request, whatever happens to it.

:class:`AccessLogMiddleware` opens a :class:`~ccproxy_core.access_log.RequestLog` for every
request under ``/api/v1``, ``/sdk/v1`` and ``/sdk/{session_id}/v1`` and closes it when the
response is over: sent, failed (the error handlers record the error type on it), or cancelled
(the client went away before the last byte). Routes only fill it in, through
:func:`request_log`; the stream relay holds it open until the stream's usage is known. It is
a plain ASGI middleware, so a streamed body passes through untouched, chunk by chunk.
"""

from __future__ import annotations

from typing import Literal

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccproxy_core.access_log import AccessLogEmitter, RequestLog
from ccproxy_core.identity import LOCAL, Caller

LOGGED_PREFIXES = ("/api/v1/", "/sdk/v1/", "/v1/")


def request_log(request: Request) -> RequestLog | None:
    """The log of the request being served, if it is one that is logged."""
    return getattr(request.state, "access_log", None)


def _logged_endpoint(path: str) -> str | None:
    """The endpoint to log for ``path``, None if it is not a client API request. A named SDK
    session's path (``/sdk/<session>/v1/...``) is logged as its template: the session id is in
    the event's ``sdk_session_id``, not in a column meant for grouping."""
    if path.startswith(LOGGED_PREFIXES):
        return path
    if path.startswith("/sdk/"):
        session, sep, rest = path[len("/sdk/"):].partition("/v1/")
        if sep and session and "/" not in session:
            return "/sdk/{session_id}/v1/" + rest
    return None


def _client_format(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "openai-chat"
    if path.endswith("/responses"):
        return "openai-responses"
    return "anthropic"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, emitter: AccessLogEmitter) -> None:
        self.app = app
        self.emitter = emitter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        endpoint = _logged_endpoint(path)
        if scope["type"] != "http" or scope.get("method") in ("HEAD", "OPTIONS") or endpoint is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        mode: Literal["api", "sdk"] = "sdk" if path.startswith("/sdk/") else "api"
        log = RequestLog(
            endpoint=endpoint,
            method=scope.get("method", "GET"),
            mode=mode,
            client_format=_client_format(path),
            user_agent=headers.get("user-agent", "")[:300],
            client_addr=client[0] if client else "",
        )
        user = scope.get("user")  # the caller, resolved by the backend's middleware in front
        if isinstance(user, Caller) and user.is_authenticated and user != LOCAL:
            log.set_identity(user.id, user.name)
        log.sink = self.emitter.emit
        scope.setdefault("state", {})["access_log"] = log
        completed = False

        async def send_wrapper(message: Message) -> None:
            nonlocal completed
            if message["type"] == "http.response.start":
                log.set_status(message["status"])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    log.mark_first_byte()
                if not message.get("more_body", False):
                    completed = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not completed and not log.error_type:
                log.set_error(500, "api_error")
            log.close()
            raise
        except BaseException:  # cancelled: the server is stopping or the client is gone
            log.close(None if completed else "cancelled")
            raise
        else:
            log.close(None if completed else "cancelled")
