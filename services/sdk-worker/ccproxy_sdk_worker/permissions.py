"""Claude Code's ``can_use_tool`` prompts as permission requests on behalf of the job's key; the run
waits for the decision. Deny, timeout or an unreachable service answer Claude with a message; a
timeout or an unreachable service is also shown to the client. Why not an MCP tool: docs/permissions.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from claude_agent_sdk import PermissionResultAllow, PermissionResultDeny
from claude_agent_sdk.types import CanUseTool, PermissionResult, ToolPermissionContext

from ccproxy_core.permissions import HttpPermissionGate, PermissionAsk, PermissionGate, denied_message
from ccproxy_core.sdk_jobs import SdkJob
from ccproxy_core.settings import Settings

log = logging.getLogger(__name__)

#: Shows the client a line of ccproxy's own in the answer (a permission that timed out).
Notify = Callable[[str], Awaitable[None]]


def can_use_tool(gate: PermissionGate, job: SdkJob, session_id: str, notify: Notify) -> CanUseTool:
    """The run's callback: each prompt is asked at ``gate``."""

    async def decide(tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext) -> PermissionResult:
        ask = PermissionAsk(tool_name=tool_name, input=tool_input, key_id=job.key_id,
                            key_name=job.key_name or job.key_id, title=context.title,
                            tool_use_id=context.tool_use_id, session_id=session_id, run_id=job.id)
        try:
            view = await gate.ask(ask)
        except Exception as exc:
            log.warning("run %s: permission for %s not asked: %s", job.id, tool_name, exc)
            message = f"Permission to use {tool_name} was denied: the permissions service cannot be reached."
            unseen = True
        else:
            log.info("run %s: permission %s for %s: %s", job.id, view.id, tool_name, view.status)
            if view.decision is not None and view.decision.behavior == "allow":
                return PermissionResultAllow(updated_input=view.decision.updated_input)
            message, unseen = denied_message(view), view.status == "expired"
        if unseen:  # nobody saw the request: the client is told too
            await notify(f"\n[ccproxy] {message}\n")
        return PermissionResultDeny(message=message)

    return decide


def gate_from_settings(settings: Settings) -> PermissionGate | None:
    """The stack's gate: the permissions service at ``SERVICES__PERMISSIONS_URL``; unset, what the
    permission mode does not allow is refused (the CLI cannot ask anyone)."""
    url = settings.services.permissions_url
    if not url:
        log.warning("SERVICES__PERMISSIONS_URL is not set: tool uses the permission mode does not allow are refused")
        return None
    secret = settings.security.internal_secret
    return HttpPermissionGate(url, secret.get_secret_value() if secret else None)
