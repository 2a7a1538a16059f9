"""One access-log event per client API request, whatever happens to it: a draft ``RequestLog`` is
opened as the request comes in (its times include finding the caller), routes fill it in
(:func:`request_log`), and when the response is over the matched route says whether it is logged."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccproxy_core.access_log import AccessLogEmitter, RequestLog
from ccproxy_core.errors import path_format
from ccproxy_core.identity import LOCAL, Caller
from ccproxy_gateway.routes import api_route

API_PREFIXES = ("/api/", "/sdk/")


def request_log(request: Request) -> RequestLog | None:
    """The draft log of the request being served (HEAD and OPTIONS have none)."""
    return getattr(request.state, "access_log", None)


class AccessLogMiddleware:  # plain ASGI: a streamed body passes through untouched, chunk by chunk
    def __init__(self, app: ASGIApp, emitter: AccessLogEmitter) -> None:
        self.app = app
        self.emitter = emitter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        user_agent = Headers(scope=scope).get("user-agent", "")[:300]
        log = RequestLog(scope["path"], method=scope["method"], user_agent=user_agent,
                         client_addr=client[0] if client else "")
        user = scope.get("user")  # the caller, resolved by the backend's middleware in front
        if isinstance(user, Caller) and user.is_authenticated:
            if user.id != LOCAL.id:
                log.set_identity(user.id, user.name)
            log.draft.sdk_session_id = user.sdk_session  # a call of that SDK run's Claude Code
        log.sink = self.emitter.emit
        scope.setdefault("state", {})["access_log"] = log
        completed = failed = False

        async def send_wrapper(message: Message) -> None:
            nonlocal completed
            if message["type"] == "http.response.start":
                log.set_status(message["status"])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    log.mark_first_byte()
                completed = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            failed = True
            raise
        finally:  # also when cancelled: the server is stopping or the client is gone
            if _claimed(scope, log):
                if failed and not completed and not log.draft.error_type:
                    log.set_error(500, "api_error")
                log.close(None if completed or failed else "cancelled")


def _claimed(scope: Scope, log: RequestLog) -> bool:
    """Whether the request is logged, and under what: a ``logged`` ApiRoute's template, mode and format;
    a path under /api/ or /sdk/ no ApiRoute answers is a client aimed at a wrong endpoint (its own path)."""
    draft, route, path = log.draft, api_route(scope), scope["path"]
    if route is not None:  # matched, or partly for a 405
        draft.endpoint, draft.mode, draft.client_format = route.path, route.mode, route.client_format
        return route.logged
    if not path.startswith(API_PREFIXES):
        return False
    draft.endpoint = path[:200]
    draft.mode = "sdk" if path.startswith("/sdk/") else "api"
    if path_format(path) == "openai":
        draft.client_format = "openai-chat" if path.endswith("/chat/completions") else "openai-responses"
    return True
