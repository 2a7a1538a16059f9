"""Sends one Anthropic request upstream and hands back the answer as it arrives.

One pooled keep-alive aiohttp session for the process; bodies relayed with ``iter_any`` (each
chunk as soon as the socket has it); one retry with a fresh token on a 401, and one on a stale
pooled connection, both before any byte reached the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson

from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import HOP_BY_HOP, ForwardRequest, UpstreamReply
from ccproxy_core.settings import AnthropicSettings
from ccproxy_core.tokens import Credential, TokenSource
from ccproxy_forwarder.injection import inject_identity, upstream_headers

log = logging.getLogger(__name__)


class ApiForwarder:
    def __init__(self, settings: AnthropicSettings, tokens: TokenSource) -> None:
        self._settings = settings
        self._tokens = tokens
        self._base_url = settings.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self.upstream_statuses: dict[int, int] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._settings.max_connections, keepalive_timeout=60, ttl_dns_cache=300
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self._settings.connect_timeout,
                    sock_read=self._settings.read_timeout,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        credential = await self._tokens.get()
        resp = await self._send(request, credential)
        if resp.status == 401 and credential.kind == "oauth":
            # The token was refused: refresh once (single-flight) and try again.
            resp.close()
            credential = await self._tokens.get(rejected=credential.secret.get_secret_value())
            resp = await self._send(request, credential)
        self.upstream_statuses[resp.status] = self.upstream_statuses.get(resp.status, 0) + 1
        headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}

        async def close() -> None:
            resp.close()

        return UpstreamReply(resp.status, headers, self._relay(resp), close, account=credential.account)

    async def _send(self, request: ForwardRequest, credential: Credential) -> aiohttp.ClientResponse:
        body = inject_identity(request.body) if credential.kind == "oauth" else request.body
        data = orjson.dumps(body)
        headers = upstream_headers(request.headers, credential)
        url = self._base_url + request.path + (f"?{request.query}" if request.query else "")
        for attempt in (1, 2):
            try:
                return await self._client().post(url, data=data, headers=headers)
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled keep-alive connection the upstream had already closed: retry once.
                if attempt == 2:
                    raise ProxyError(502, "upstream closed the connection") from exc
            except TimeoutError as exc:
                raise ProxyError(504, "upstream did not answer in time") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise ProxyError(502, f"upstream unreachable ({type(exc).__name__})") from exc
        raise AssertionError("unreachable")

    async def _relay(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise ProxyError(504, "upstream stream stalled") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ProxyError(502, f"upstream connection lost ({type(exc).__name__})") from exc
        finally:
            resp.close()
