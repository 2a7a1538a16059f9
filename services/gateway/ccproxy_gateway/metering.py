"""Per-member client keys at the gateway: who is asking, may they, and what did it cost.

:class:`KeyGuard` (ASGI middleware) resolves the presented key once per request, through a
short local cache, and records who it is (for :class:`~ccproxy_gateway.client_auth.ClientAuth`,
the access log and the forwarder). :class:`MeteredForwarder` wraps the forwarder: before a
Messages request goes upstream it is *admitted* (rate limits and budget reserved atomically by
auth, in Redis); when its answer is over, the real usage is *settled*. Both see every API-mode
request, Anthropic or OpenAI, without the routes knowing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ccproxy_core.client_keys import (
    Admission,
    CachedKeys,
    KeyAuthority,
    Principal,
    UsageReport,
    current_principal,
)
from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import Forwarder, ForwardRequest, UpstreamReply
from ccproxy_core.routing import HINT_ACCOUNTS, HINT_KEY
from ccproxy_gateway.client_auth import AUTH_ERROR_SCOPE, PRINCIPAL_SCOPE, ClientAuth, key_from_headers
from ccproxy_gateway.usage import StreamUsageTap, Usage, usage_from_message

log = logging.getLogger(__name__)

#: Upstream paths that cost money (count_tokens and models are free).
METERED_PATHS = ("/v1/messages",)


class KeyGuard:
    """Resolve the client key of every HTTP request (never refuses: routes decide via
    ``ClientAuth.check``, so /health and /metrics stay open)."""

    def __init__(self, app: ASGIApp, client_auth: ClientAuth) -> None:
        self.app = app
        self.client_auth = client_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal: Principal | None = None
        try:
            principal = await self.client_auth.resolve(key_from_headers(scope.get("headers", [])))
        except ProxyError as exc:
            scope[AUTH_ERROR_SCOPE] = exc
        if principal is not None:
            scope[PRINCIPAL_SCOPE] = principal
            access = scope.get("state", {}).get("access_log")
            if access is not None:
                access.set_identity(principal.key_id, principal.key_name)
        token = current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)


class MeteredForwarder:
    """A :class:`Forwarder` that admits and settles requests made with a client key."""

    def __init__(self, inner: Forwarder, keys: KeyAuthority) -> None:
        self.inner = inner
        self.keys = keys
        self._tasks: set[asyncio.Task[Any]] = set()

    def __getattr__(self, name: str) -> Any:  # aclose() and the like reach the real forwarder
        return getattr(self.inner, name)

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        principal = current_principal.get()
        key = principal.key if principal is not None else None
        if key is None:
            return await self.inner.forward(request)
        request.hints[HINT_KEY] = key.id
        if key.accounts:
            request.hints[HINT_ACCOUNTS] = ",".join(key.accounts)
        admission: Admission | None = None
        if key.limited and request.path in METERED_PATHS:
            body = request.body
            max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else 4096
            admission = await self.keys.admit(
                key, str(body.get("model") or ""), len(orjson.dumps(body)), int(max_tokens or 0)
            )
        try:
            reply = await self.inner.forward(request)
        except BaseException:
            if admission is not None:
                self._settle(admission, Usage())
            raise
        if admission is None:
            return reply
        return _metered(reply, lambda usage: self._settle(admission, usage))

    def _settle(self, admission: Admission, usage: Usage) -> None:
        report = UsageReport(
            model=usage.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )

        async def settle() -> None:
            try:
                await self.keys.settle(admission, report)
            except Exception as exc:  # the reservation expires by itself; say so, do not crash
                log.warning("could not settle the usage of key %s: %s", admission.key_id, exc)

        task = asyncio.get_running_loop().create_task(settle())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for settlements in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _metered(reply: UpstreamReply, on_done: Any) -> UpstreamReply:
    """The same reply, read on the side for its usage; ``on_done(usage)`` once it is over."""
    inner_chunks = reply.__aiter__()
    stream = reply.is_stream
    tap = StreamUsageTap() if stream else None
    collected: list[bytes] = []
    done = False

    def finish() -> None:
        nonlocal done
        if done:
            return
        done = True
        if reply.status != 200:
            usage = Usage()
        elif tap is not None:
            usage = tap.usage
        else:
            usage = usage_from_message(b"".join(collected))
        on_done(usage)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in inner_chunks:
                if tap is not None:
                    tap.feed(chunk)
                elif reply.status == 200:
                    collected.append(chunk)
                yield chunk
        finally:
            finish()

    original_close = reply._close

    async def close() -> None:
        try:
            await original_close()
        finally:
            finish()

    reply._chunks = chunks()
    reply._close = close
    return reply


def keys_enabled(keys: KeyAuthority | None, ttl: float) -> KeyAuthority | None:
    """The key authority with its lookups cached (revocation reaches every replica within ttl)."""
    if keys is None:
        return None
    return keys if isinstance(keys, CachedKeys) else CachedKeys(keys, ttl)
