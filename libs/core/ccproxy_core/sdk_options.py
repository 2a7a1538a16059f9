"""Which Claude Code options a client may set per request, and where a run may work.

Checked twice: by the gateway, so a refused request gets its 403 before it waits in a queue,
and by the worker, which must not trust a job it did not check itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import ClaudeOptions, Settings

#: Options that exist (``CLAUDE__OPTIONS__*``).
OPTION_NAMES = frozenset(ClaudeOptions.model_fields)
#: Never per request, whatever the allow-list says: they run commands or widen access silently.
NEVER_PER_REQUEST = frozenset({"mcp_servers", "permission_prompt_tool_name"})


def workspace_root(settings: Settings) -> Path:
    """The directory every run's ``cwd`` must be inside."""
    claude = settings.claude
    if claude.workspace_root is not None:
        root = claude.workspace_root
    elif claude.options.cwd:
        root = Path(claude.options.cwd)
    else:
        root = settings.data_dir / "workspace"
    return root.expanduser().resolve()


def resolve_cwd(cwd: str | None, root: Path) -> Path:
    """``cwd`` (relative ones are under ``root``) as an absolute path inside ``root``; 403 if not."""
    if not cwd:
        return root
    path = Path(cwd).expanduser()
    if not path.is_absolute():
        path = root / path
    path = path.resolve()  # symlinks and .. cannot lead out
    if path != root and root not in path.parents:
        raise ProxyError(403, f"cwd {cwd!r} is outside the workspace root (CLAUDE__WORKSPACE_ROOT)", param="cwd")
    return path


def check_overrides(raw: Any, settings: Settings) -> dict[str, Any]:
    """The request's ``claude_options``, validated: 400 if malformed, 403 if not allowed."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProxyError(400, "claude_options: must be an object", param="claude_options")
    unknown = sorted(set(raw) - OPTION_NAMES)
    if unknown:
        raise ProxyError(400, f"claude_options: unknown option(s) {', '.join(unknown)}", param="claude_options")
    allowed = set(settings.claude.overridable_options) - NEVER_PER_REQUEST
    refused = sorted(set(raw) - allowed)
    if refused:
        raise ProxyError(
            403,
            f"claude_options: {', '.join(refused)} may not be set per request on this server "
            "(CLAUDE__OVERRIDABLE_OPTIONS)",
            param="claude_options",
        )
    try:
        checked = ClaudeOptions.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProxyError(400, f"claude_options.{where}: {first['msg']}", param="claude_options") from exc
    if checked.permission_mode == "bypassPermissions":
        raise ProxyError(
            403, "claude_options: permission_mode bypassPermissions is not allowed per request",
            param="claude_options",
        )
    if checked.cwd is not None:
        resolve_cwd(checked.cwd, workspace_root(settings))
    return checked.model_dump(include=set(raw))
