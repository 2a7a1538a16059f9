"""``GET /v1/models``: the upstream's list (it knows models the packaged ``models.json`` does not
yet), cached per query string for ``ANTHROPIC__MODELS_CACHE_SECONDS`` (IDEs poll it); the static
list when the upstream cannot answer, so a listing never fails."""

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
        request = ForwardRequest(path="/v1/models", headers=headers, body={}, query=query, method="GET", key=key)
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                reply = await self._forwarder.forward(request)
                content = await reply.read()
            if reply.status != 200:
                raise ProxyError(reply.status, f"upstream answered {reply.status}")
            upstream = orjson.loads(content)
            if not isinstance(upstream, dict):
                raise ValueError("upstream models listing is not an object")
            body = upstream_listing(upstream, self._aliases)
        except (ProxyError, ValueError, TimeoutError) as exc:  # orjson.JSONDecodeError is a ValueError
            if not self._warned:
                self._warned = True
                reason = exc.message if isinstance(exc, ProxyError) else type(exc).__name__
                log.warning("upstream models listing unavailable (%s): serving the static list", reason)
            return models_listing(self._aliases)
        self._warned = False
        if self._cache_seconds > 0:
            self._cache[query] = (now, body)
        return body
