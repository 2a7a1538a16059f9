"""Per-member client keys at the gateway: the one place a limited key's request is *admitted*
(rate limits and budget reserved atomically by auth) before it costs anything, and *settled*
with its real usage after. Every upstream call goes through :class:`MeteredForwarder`, so an SDK
run's calls (made with its run token) are metered like the member's own API requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from ccproxy_core.client_keys import Admission, KeyAuthority, KeyInfo
from ccproxy_core.forwarding import Forwarder, ForwardRequest, UpstreamReply
from ccproxy_core.models import TokenUsage

log = logging.getLogger(__name__)


class KeyMeter:
    """Settlement runs in the background (it never delays an answer), once per admission, with
    zero usage when nothing was spent, so a reservation is released rather than left to expire."""

    def __init__(self, keys: KeyAuthority) -> None:
        self.keys = keys
        #: Settlements in flight, kept referenced until done.
        self.tasks: set[asyncio.Task[Any]] = set()

    async def admit(self, key: KeyInfo | None, body: Mapping[str, Any]) -> Admission | None:
        """Reserve for a Messages ``body``; None for a key without limits (nothing to settle).
        Raises ProxyError 429 (rate limit) or 402 (budget) when the key may not spend it."""
        if key is None or not key.limited:
            return None
        # The routes refused a bad max_tokens already; an absent one (SDK mode) estimates 4096.
        max_tokens = body.get("max_tokens")
        if type(max_tokens) is not int or max_tokens < 1:
            max_tokens = 4096
        return await self.keys.admit(key, str(body.get("model") or ""), len(orjson.dumps(body)), max_tokens)

    def settle(self, admission: Admission | None, usage: TokenUsage) -> None:
        if admission is None:
            return

        async def settle() -> None:
            try:
                await self.keys.settle(admission, usage)
            except Exception as exc:  # the reservation expires by itself; say so, do not crash
                log.warning("could not settle the usage of key %s: %s", admission.key_id, exc)

        task = asyncio.get_running_loop().create_task(settle())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class MeteredForwarder:
    """A :class:`Forwarder` metering the client key each ``ForwardRequest`` carries."""

    def __init__(self, inner: Forwarder, meter: KeyMeter) -> None:
        self.inner = inner
        self.meter = meter

    def __getattr__(self, name: str) -> Any:  # aclose() and the like reach the real forwarder
        return getattr(self.inner, name)

    async def forward(self, request: ForwardRequest) -> UpstreamReply:
        admission = await self.meter.admit(request.key, request.body) if request.metered else None
        try:
            reply = await self.inner.forward(request)
        except BaseException:
            self.meter.settle(admission, TokenUsage())
            raise
        if admission is not None:  # settled with the usage the gateway's relay reads (relay.py)
            reply.on_usage = lambda usage: self.meter.settle(admission, usage)
        return reply

