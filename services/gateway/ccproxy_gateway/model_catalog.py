"""``GET /v1/models`` in API mode: the upstream's list, cached, or the static one.

The upstream knows models the packaged ``models.json`` does not yet; asking it keeps the listing
current. Its answer is cached per query string for ``ANTHROPIC__MODELS_CACHE_SECONDS`` (listings
are polled by IDEs and change rarely); when the upstream cannot answer (no credentials, an error
status, a timeout) the static list is served instead, so a listing never fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from ccproxy_core.client_keys import KeyInfo
from ccproxy_core.errors import ProxyError
from ccproxy_core.forwarding import Forwarder, ForwardRequest
from ccproxy_core.models import models_listing, upstream_listing

log = logging.getLogger(__name__)

#: Longest wait for the upstream's listing before serving the static one.
FETCH_TIMEOUT = 10.0


class ModelCatalog:
    def __init__(self, forwarder: Forwarder, cache_seconds: float, aliases: list[str]) -> None:
        self._forwarder = forwarder
        self._cache_seconds = cache_seconds
        self._aliases = aliases
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._warned = False

    async def listing(self, headers: dict[str, str], query: str, key: KeyInfo | None = None) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._cache.get(query)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                body = await self._fetch(headers, query, key)
        except (ProxyError, ValueError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, ProxyError) else type(exc).__name__
            if not self._warned:
                self._warned = True
                log.warning("upstream models listing unavailable (%s): serving the static list", reason)
            return models_listing(self._aliases)
        self._warned = False
        if self._cache_seconds > 0:
            self._cache[query] = (now, body)
        return body

    async def _fetch(self, headers: dict[str, str], query: str, key: KeyInfo | None) -> dict[str, Any]:
        request = ForwardRequest(path="/v1/models", headers=headers, body={}, query=query, method="GET", key=key)
        reply = await self._forwarder.forward(request)
        content = await reply.read()
        if reply.status != 200:
            raise ProxyError(reply.status, f"upstream answered {reply.status}")
        try:
            upstream = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ValueError("upstream models listing is not JSON") from exc
        if not isinstance(upstream, dict):
            raise ValueError("upstream models listing is not an object")
        return upstream_listing(upstream, self._aliases)
