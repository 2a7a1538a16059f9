"""The contract between the gateway and the api-forwarder: one Anthropic request in, the upstream's
status, headers and bytes out, untouched. A method call in one process, :class:`HttpForwarder` in the stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson

from ccproxy_core.client_keys import KeyInfo
from ccproxy_core.errors import ProxyError, upstream_error
from ccproxy_core.internal import PROXY_ERROR_HEADER, InternalClient

if TYPE_CHECKING:
    from ccproxy_core.models import TokenUsage


@dataclass(slots=True)
class ForwardRequest:
    path: str
    #: The client's headers (the forwarder decides which to drop).
    headers: dict[str, str]
    #: The forwarder injects the identity block into it (ignored for GET).
    body: dict[str, Any]
    query: str = ""
    method: str = "POST"
    #: The caller's client key: metered by the gateway, routed to its accounts by the forwarder.
    key: KeyInfo | None = None
    #: The gateway admits and settles the key's limits (the route's ``metered``); not sent on.
    metered: bool = False


#: How :class:`HttpForwarder` carries ``ForwardRequest.key``; a client's own ``x-ccproxy-*`` are dropped.
FORWARD_KEY_HEADER = "x-ccproxy-key"
INTERNAL_HEADER_PREFIX = "x-ccproxy-"
#: Prefix of the upstream's subscription quota headers (``-status``, ``-5h-utilization``, ``-reset``).
UNIFIED = "anthropic-ratelimit-unified-"


def header_number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(eq=False)
class UpstreamReply:
    """The upstream's answer: status and headers now, body as it arrives."""

    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]
    account: str | None = None
    #: Billing's hook (the gateway's metered forwarder sets it): told the answer's usage.
    on_usage: Callable[[TokenUsage], None] | None = None

    def settle(self, usage: TokenUsage) -> None:
        """Hand the answer's usage to billing, once."""
        hook, self.on_usage = self.on_usage, None
        if hook is not None:
            hook(usage)

    @property
    def is_stream(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks

    async def read(self) -> bytes:
        try:
            return b"".join([chunk async for chunk in self.chunks])
        finally:
            await self.aclose()


class Forwarder(Protocol):
    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        """Raises ProxyError when there is no upstream answer (no credentials, unreachable, timeout)."""


#: Response headers that describe the connection, not the content: never relayed.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "content-length", "content-encoding", "host",
})


class HttpForwarder(InternalClient):
    def __init__(self, base_url: str, internal_secret: str, read_timeout: float = 600.0) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout)
        super().__init__(base_url, internal_secret, timeout=timeout, auto_decompress=False)

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        headers = {
            k: v for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and not k.lower().startswith(INTERNAL_HEADER_PREFIX)
        }
        data = None if request.method == "GET" else orjson.dumps(request.body)
        if data is not None:
            headers["content-type"] = "application/json"
        if request.key is not None:
            headers[FORWARD_KEY_HEADER] = request.key.model_dump_json()
        url = f"{self._base_url}/internal/forward{request.path}"
        if request.query:
            url += "?" + request.query
        try:
            resp = await self._client().request(request.method, url, data=data, headers=headers)
        except (aiohttp.ClientError, OSError) as exc:
            raise ProxyError(502, f"api-forwarder unreachable: {type(exc).__name__}") from exc
        reply_headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        if reply_headers.pop(PROXY_ERROR_HEADER, None):  # the forwarder's own error, not the upstream's
            body = await resp.read()
            resp.release()
            raise upstream_error(resp.status, body, reply_headers)
        return UpstreamReply(
            resp.status, reply_headers, iter_body(resp, "api-forwarder"), _closer(resp),
            account=reply_headers.get("x-ccproxy-account"),
        )


async def iter_body(resp: aiohttp.ClientResponse, source: str) -> AsyncIterator[bytes]:
    """``resp``'s bytes as they come, closed at the end; a stall is a 504, a lost connection a 502."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except TimeoutError as exc:
        raise ProxyError(504, f"{source} stream stalled") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ProxyError(502, f"{source} connection lost ({type(exc).__name__})") from exc
    finally:
        resp.close()


def _closer(resp: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        resp.close()

    return close
