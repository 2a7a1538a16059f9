"""Which Claude Code options a request may set, and where a run may work. ``claude_options`` may
only narrow the operator's: :func:`check_overrides` refuses (403) what would widen them and
:func:`apply_overrides` merges the rest. Both gateway (a 403 before the queue) and worker check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ccproxy_core.errors import ProxyError, validation_error
from ccproxy_core.settings import ClaudeOptions, Settings

OPTION_NAMES = frozenset(ClaudeOptions.model_fields)
#: Never per request, whatever the allow-list says: they run commands or widen access silently.
NEVER_PER_REQUEST = frozenset({"mcp_servers", "permission_prompt_tool_name"})
#: Permission modes from the strictest to the laxest (``dontAsk`` denies instead of asking).
PERMISSION_ORDER = ("plan", "dontAsk", "default", "acceptEdits", "auto", "bypassPermissions")
#: Limits a request may lower but never raise.
LIMITS = ("max_turns", "max_budget_usd", "max_thinking_tokens")


def workspace_root(settings: Settings) -> Path:
    cwd = settings.claude.options.cwd
    root = settings.claude.workspace_root or (Path(cwd) if cwd else settings.data_dir / "workspace")
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


def _refuse(status: int, message: str) -> ProxyError:
    return ProxyError(status, f"claude_options: {message}", param="claude_options")


def check_overrides(raw: Any, settings: Settings) -> dict[str, Any]:
    """The request's ``claude_options``, validated: 400 if malformed, 403 if not allowed."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _refuse(400, "must be an object")
    unknown = sorted(set(raw) - OPTION_NAMES)
    if unknown:
        raise _refuse(400, f"unknown option(s) {', '.join(unknown)}")
    refused = sorted(set(raw) - (set(settings.claude.overridable_options) - NEVER_PER_REQUEST))
    if refused:
        raise _refuse(403, f"{', '.join(refused)} may not be set per request on this server "
                           "(CLAUDE__OVERRIDABLE_OPTIONS)")
    try:
        checked = ClaudeOptions.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, "claude_options") from exc
    if checked.permission_mode == "bypassPermissions":
        raise _refuse(403, "permission_mode bypassPermissions is not allowed per request")
    operator = settings.claude.options
    if checked.permission_mode is not None:
        server_mode = operator.permission_mode or "default"
        stricter = PERMISSION_ORDER[: PERMISSION_ORDER.index(server_mode) + 1]
        if checked.permission_mode not in stricter:
            raise _refuse(403, f"permission_mode {checked.permission_mode} is less strict than this server's "
                               f"{server_mode} (CLAUDE__OPTIONS__PERMISSION_MODE); a request may only make it "
                               f"stricter ({', '.join(stricter)})")
    extra = [t for t in checked.allowed_tools if t not in operator.allowed_tools]
    if extra:
        raise _refuse(403, f"allowed_tools {', '.join(extra)} are not pre-approved on this server "
                           "(CLAUDE__OPTIONS__ALLOWED_TOOLS); a request may only pre-approve fewer tools")
    granted = {Path(d).expanduser().resolve() for d in operator.add_dirs}
    extra = [d for d in checked.add_dirs if Path(d).expanduser().resolve() not in granted]
    if extra:
        raise _refuse(403, f"add_dirs {', '.join(extra)} are not granted on this server (CLAUDE__OPTIONS__ADD_DIRS)")
    if checked.cwd is not None:
        resolve_cwd(checked.cwd, workspace_root(settings))
    return checked.model_dump(include=set(raw))


def apply_overrides(overrides: dict[str, Any], settings: Settings) -> ClaudeOptions:
    """The options of a run: the operator's, narrowed by the request's (checked) ``overrides``."""
    operator = settings.claude.options
    update = dict(overrides)
    if "disallowed_tools" in update:
        update["disallowed_tools"] = [
            *operator.disallowed_tools, *(t for t in update["disallowed_tools"] if t not in operator.disallowed_tools)
        ]
    for name in LIMITS:
        mine, theirs = getattr(operator, name), update.get(name)
        if mine is not None and theirs is not None:
            update[name] = min(mine, theirs)
        elif name in update and theirs is None:
            update[name] = mine
    if "append_system_prompt" in update:
        update["append_system_prompt"] = "\n\n".join(
            t for t in (operator.append_system_prompt, update["append_system_prompt"]) if t
        ) or None
    for name in ("allowed_tools", "add_dirs", "permission_mode", "cwd", "model"):
        if name in update and update[name] is None:
            update[name] = getattr(operator, name)  # null means "the server's"
    return operator.model_copy(update=update)
