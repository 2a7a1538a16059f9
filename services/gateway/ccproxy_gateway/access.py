"""One access-log event per client API request, whatever happens to it.

:class:`AccessLogMiddleware` opens a :class:`~ccproxy_core.access_log.RequestLog` draft when a
request comes in (so its times include finding the caller), and the matched route says whether
it is logged: an :class:`~ccproxy_gateway.routes.ApiRoute` declared ``logged`` claims the draft,
under its template (``/sdk/{session_id}/v1/messages``, never a raw path), mode and format. A
claimed log is closed when the response is over: sent, failed (the error handlers record the
error type on it), or cancelled (the client went away before the last byte); any other draft is
dropped, except a request under ``/api/`` or ``/sdk/`` that no route answers (a client aimed at
a wrong endpoint: logged under its path, so the lead can see it). Routes only fill it in,
through :func:`request_log`; the stream relay holds it open until the stream's usage is known.
It is a plain ASGI middleware, so a streamed body passes through untouched, chunk by chunk.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccproxy_core.access_log import AccessLogEmitter, RequestLog
from ccproxy_core.errors import path_format
from ccproxy_core.identity import LOCAL, Caller
from ccproxy_gateway.routes import PENDING_LOG, api_route

#: Where a request no route answers is still a client API request (logged under its own path).
API_PREFIXES = ("/api/", "/sdk/")


def request_log(request: Request) -> RequestLog | None:
    """The log of the request being served, if it is one that is logged."""
    return getattr(request.state, "access_log", None)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, emitter: AccessLogEmitter) -> None:
        self.app = app
        self.emitter = emitter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        # A draft: the matched ApiRoute fills in its endpoint, mode and format, and claims it.
        log = RequestLog(
            endpoint=scope.get("path", ""),
            method=scope.get("method", "GET"),
            user_agent=headers.get("user-agent", "")[:300],
            client_addr=client[0] if client else "",
        )
        user = scope.get("user")  # the caller, resolved by the backend's middleware in front
        if isinstance(user, Caller) and user.is_authenticated:
            if user.id != LOCAL.id:
                log.set_identity(user.id, user.name)
            log.draft.sdk_session_id = user.sdk_session  # a call of that SDK run's Claude Code
        log.sink = self.emitter.emit
        state = scope.setdefault("state", {})
        state[PENDING_LOG] = log
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
            if state.get("access_log") is log:
                if not completed and not log.draft.error_type:
                    log.set_error(500, "api_error")
                log.close()
            raise
        except BaseException:  # cancelled: the server is stopping or the client is gone
            if state.get("access_log") is log:
                log.close(None if completed else "cancelled")
            raise
        else:
            if state.get("access_log") is None and api_route(scope) is None and _unmatched_api(scope, log):
                state["access_log"] = log
            if state.get("access_log") is log:  # claimed by a logged route; else dropped
                log.close(None if completed else "cancelled")


def _unmatched_api(scope: Scope, log: RequestLog) -> bool:
    """Claim ``log`` for a request under the client API no route answered (its path, cut short)."""
    path = scope.get("path", "")
    if not path.startswith(API_PREFIXES):
        return False
    log.draft.endpoint = path[:200]
    log.draft.mode = "sdk" if path.startswith("/sdk/") else "api"
    if path_format(path) == "openai":
        log.draft.client_format = "openai-chat" if path.endswith("/chat/completions") else "openai-responses"
    return True
