"""Tool-permission requests: the wire models, and the :class:`PermissionGate` an SDK run asks, which
returns once a human (or the timeout) decided: the service's own in process, HTTP in the stack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal, Protocol

import aiohttp
from pydantic import AliasChoices, BaseModel, Field

from ccproxy_core.internal import InternalClient

log = logging.getLogger(__name__)

Status = Literal["pending", "allowed", "denied", "expired", "cancelled"]


class PermissionAsk(BaseModel):
    tool_name: str
    input: dict[str, Any]
    key_id: str
    key_name: str
    #: The SDK's own sentence for it ("Claude wants to write hello.txt").
    title: str | None = None
    tool_use_id: str | None = None
    session_id: str | None = None
    run_id: str | None = None


class PermissionDecision(BaseModel):
    behavior: Literal["allow", "deny"]
    status: Status
    #: For allow: the input the tool runs with, when the approver edited it.
    updated_input: dict[str, Any] | None = None
    #: For deny: what Claude is told.
    message: str | None = None
    decided_by: str | None = None
    decided_at: float


class PermissionView(PermissionAsk):
    id: str
    created_at: float
    expires_at: float
    status: Status = "pending"
    decision: PermissionDecision | None = None


class PermissionResponse(BaseModel):
    behavior: Literal["allow", "deny"]
    updated_input: dict[str, Any] | None = Field(
        default=None, validation_alias=AliasChoices("updated_input", "updatedInput")
    )
    message: str | None = None


class PermissionGate(Protocol):
    async def ask(self, ask: PermissionAsk) -> PermissionView:
        """Create the request and wait for its decision; cancelling withdraws it."""


def denied_message(view: PermissionView) -> str:
    """What Claude (and the client) is told when a request ends without an allow."""
    return (view.decision and view.decision.message) or f"Permission to use {view.tool_name} was denied."


class HttpPermissionGate(InternalClient):
    """The permissions service's internal API: one create, then long polls, so a dropped connection
    or a service restart costs only a retry (the decision is in Redis)."""

    def __init__(self, url: str, internal_secret: str | None, poll_seconds: float = 20.0) -> None:
        super().__init__(url, internal_secret or "")
        self._poll = poll_seconds

    async def ask(self, ask: PermissionAsk) -> PermissionView:
        view = await self._retrying("POST", "/internal/permissions", time.time() + 30, json=ask.model_dump(mode="json"))
        if view is None:
            raise RuntimeError("the permissions service cannot be reached")
        try:
            while view.status == "pending":
                # Past the request's own expiry plus a margin, stop waiting for an unreachable service.
                path = f"/internal/permissions/{view.id}/wait?timeout={self._poll:g}"
                got = await self._retrying("GET", path, view.expires_at + 30)
                if got is None:
                    return ended(view, "expired", "the permissions service could not be reached.")
                view = got
            return view
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._cancel(view.id))
            raise

    async def _cancel(self, request_id: str) -> None:
        async with self._client().post(
            f"{self._base_url}/internal/permissions/{request_id}/cancel", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            await resp.read()

    async def _retrying(self, method: str, path: str, deadline: float, **kwargs: Any) -> PermissionView | None:
        pause = 0.2
        while True:
            try:
                async with self._client().request(
                    method, self._base_url + path, timeout=aiohttp.ClientTimeout(total=self._poll + 15), **kwargs
                ) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        return PermissionView.model_validate_json(body)
                    if resp.status < 500:
                        raise RuntimeError(f"permissions service answered {resp.status}: {body[:200]!r}")
                    log.warning("permissions service answered %s; retrying", resp.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("permissions service unreachable (%s); retrying", type(exc).__name__)
            if time.time() >= deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


def refusal(status: Status, message: str) -> PermissionDecision:
    """A deny no human made (expired, cancelled, lost)."""
    return PermissionDecision(behavior="deny", status=status, message=message, decided_at=time.time())


def denial(view: PermissionView, status: Status, why: str) -> PermissionDecision:
    return refusal(status, f"Permission to use {view.tool_name} was denied: {why}")


def ended(view: PermissionView, status: Status, why: str) -> PermissionView:
    """``view`` closed here, without the service's decision."""
    return view.model_copy(update={"status": status, "decision": denial(view, status, why)})
