"""One Anthropic request upstream, the answer back as it arrives, on one pooled aiohttp session. The
account pool (:class:`~ccproxy_core.routing.AccountRouter`) picks the account and hears of its 429s,
529s and dead tokens; every retry (fresh token, stale connection, other account) precedes the first byte."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp
import orjson

from ccproxy_core.errors import ANTHROPIC_TYPE_BY_STATUS, ProxyError, anthropic_error_body
from ccproxy_core.forwarding import HOP_BY_HOP, UNIFIED, ForwardRequest, UpstreamReply, iter_body
from ccproxy_core.logging import scrub_secret
from ccproxy_core.routing import HINT_ACCOUNTS, HINT_KEY, HINT_SESSION, AccountRouter, session_key
from ccproxy_core.settings import AnthropicSettings
from ccproxy_core.tokens import Credential
from ccproxy_forwarder.injection import inject_identity, upstream_headers

log = logging.getLogger(__name__)

#: Largest upstream error body read and relayed (real ones are a few hundred bytes).
MAX_ERROR_BYTES = 64 * 1024


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def routing_hints(request: ForwardRequest) -> dict[str, str]:
    """What the pool picks an account by: the conversation (sticky), the caller's key and the
    accounts that key may use (all, when it names none)."""
    key = request.key
    hints = {HINT_SESSION: session_key(request.body, request.headers) or "", HINT_KEY: key.id if key else "",
             HINT_ACCOUNTS: ",".join(key.accounts) if key else ""}
    return {name: value for name, value in hints.items() if value}


class ApiForwarder:
    def __init__(self, settings: AnthropicSettings, router: AccountRouter) -> None:
        self._settings = settings
        self._router = router
        self._base_url = settings.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._quota_seen: dict[str, tuple[tuple[tuple[str, str], ...], float]] = {}
        self._reports: set[asyncio.Task[None]] = set()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self._settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=s.max_connections, keepalive_timeout=60, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),  # raw bytes are relayed: never gzipped
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        credential, resp = await self._routed(request)
        headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}

        async def close() -> None:
            resp.close()

        chunks = iter_body(resp, "upstream")
        if resp.status >= 400:  # small: read whole
            chunks = _once(await self._error_body(resp, credential, headers))
        return UpstreamReply(resp.status, headers, chunks, close, account=credential.account)

    async def _error_body(self, resp: aiohttp.ClientResponse, credential: Credential, headers: dict[str, str]) -> bytes:
        """At most MAX_ERROR_BYTES of it (a bigger one is replaced by an error saying so), without
        the credential we sent: an upstream may echo a refused token or key, whole or in part."""
        body = bytearray()
        try:
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > MAX_ERROR_BYTES:
                    break
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass  # what arrived is what there is
        finally:
            resp.close()
        if len(body) > MAX_ERROR_BYTES:
            log.warning("upstream answered %d with an error body over %d bytes", resp.status, MAX_ERROR_BYTES)
            headers["content-type"] = "application/json"
            return anthropic_error_body(
                ANTHROPIC_TYPE_BY_STATUS.get(resp.status, "api_error"),
                f"the upstream answered {resp.status} with an error body over {MAX_ERROR_BYTES} bytes (not relayed)",
            )
        return scrub_secret(body.decode("utf-8", errors="replace"), credential.secret.get_secret_value()).encode()

    async def _routed(self, request: ForwardRequest) -> tuple[Credential, aiohttp.ClientResponse]:
        """Send on the account the pool picks; on a 429/529/dead token, tell the pool and try
        once more (same account after a short wait, or another one)."""
        router, hints = self._router, routing_hints(request)
        credential = await router.pick(hints)
        retried = False
        while True:
            resp = await self._send(request, credential)
            if resp.status == 401 and credential.kind == "oauth":
                try:
                    refreshed = await router.pick(hints, account=credential.account,
                                                  rejected=credential.secret.get_secret_value())
                except ProxyError as exc:
                    if exc.status != 401:
                        resp.close()
                        raise
                    # The refresh failed too: keep the upstream's 401 and let the pool judge.
                else:
                    resp.close()
                    credential = refreshed
                    resp = await self._send(request, credential)
            if not self._should_report(credential.account, resp):
                return credential, resp
            if resp.status < 400:
                self._report_later(credential.account, resp, hints)
                return credential, resp
            outcome = await router.report(credential.account, resp.status, _lower(resp.headers), hints)
            self._quota_seen.pop(credential.account, None)
            if retried or outcome.action == "done":
                return credential, resp
            retried = True
            if outcome.action == "retry_same":
                log.info("account %s throttled: retrying in %.1f s", credential.account, outcome.wait)
                resp.close()
                await asyncio.sleep(outcome.wait)
                continue
            try:
                following = await router.pick(hints, exclude=[credential.account])
            except ProxyError:
                return credential, resp  # no other account: the client gets the upstream's answer
            log.info("account %s %s: retrying on %s", credential.account, outcome.reason, following.account)
            resp.close()
            credential = following

    def _should_report(self, account: str, resp: aiohttp.ClientResponse) -> bool:
        """Errors always; quota headers of a success when they changed (or every 30 s)."""
        if resp.status in (401, 429, 529):
            return True
        quota = tuple(sorted((k.lower(), v) for k, v in resp.headers.items() if k.lower().startswith(UNIFIED)))
        if not quota:
            return False
        now = time.monotonic()
        seen = self._quota_seen.get(account)
        if seen is not None and seen[0] == quota and now - seen[1] < 30:
            return False
        self._quota_seen[account] = (quota, now)
        return True

    def _report_later(self, account: str, resp: aiohttp.ClientResponse, hints: dict[str, str]) -> None:
        async def report() -> None:
            try:
                await self._router.report(account, resp.status, _lower(resp.headers), hints)
            except Exception as exc:  # quota bookkeeping must never fail a request
                log.debug("could not report quota headers of %s: %s", account, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(report())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _send(self, request: ForwardRequest, credential: Credential) -> aiohttp.ClientResponse:
        headers = upstream_headers(request.headers, credential, self._settings.version)
        url = self._base_url + request.path + (f"?{request.query}" if request.query else "")
        data: bytes | None = None
        if request.method == "GET":
            headers.pop("content-type", None)  # no body, and no identity block to inject
        else:
            data = orjson.dumps(inject_identity(request.body) if credential.kind == "oauth" else request.body)
        for _attempt in (1, 2):  # once more after a pooled keep-alive connection the upstream had already closed
            try:
                return await self._client().request(request.method, url, data=data, headers=headers)
            except aiohttp.ServerDisconnectedError:
                continue
            except TimeoutError as exc:
                raise ProxyError(504, "upstream did not answer in time") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise ProxyError(502, f"upstream unreachable ({type(exc).__name__})") from exc
        raise ProxyError(502, "upstream closed the connection")

