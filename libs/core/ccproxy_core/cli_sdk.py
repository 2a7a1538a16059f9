"""SDK mode on the command line: the flags earlier ccproxy versions had.

``--claude-code-options-cwd``, ``--claude-code-options-permission-mode``,
``--claude-sdk-message-mode`` ... are the ``CLAUDE__*`` settings under their old names, and win
over the environment like every flag. :func:`with_claude_flags` adds them to a command without
the command listing them (``serve`` and ``run`` take them).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

#: Flag -> (setting under ``CLAUDE__``, type, help).
FLAGS: dict[str, tuple[str, type, str]] = {
    "claude_code_options_cwd": ("options__cwd", str, "Working directory of Claude Code (CLAUDE__OPTIONS__CWD)."),
    "claude_code_options_permission_mode": (
        "options__permission_mode", str,
        "default, acceptEdits, plan, bypassPermissions, dontAsk, auto (CLAUDE__OPTIONS__PERMISSION_MODE).",
    ),
    "claude_code_options_model": ("options__model", str, "Model for every run (CLAUDE__OPTIONS__MODEL)."),
    "claude_code_options_max_turns": ("options__max_turns", int, "Turn limit (CLAUDE__OPTIONS__MAX_TURNS)."),
    "claude_code_options_allowed_tools": (
        "options__allowed_tools", str, "Comma-separated tools allowed without asking.",
    ),
    "claude_code_options_disallowed_tools": ("options__disallowed_tools", str, "Comma-separated tools never allowed."),
    "claude_code_options_append_system_prompt": (
        "options__append_system_prompt", str, "Text appended to Claude Code's system prompt.",
    ),
    "claude_code_options_max_thinking_tokens": (
        "options__max_thinking_tokens", int, "Thinking budget (CLAUDE__OPTIONS__MAX_THINKING_TOKENS).",
    ),
    "claude_sdk_message_mode": ("sdk_message_mode", str, "forward, formatted or ignore (CLAUDE__SDK_MESSAGE_MODE)."),
    "claude_sdk_pretty_format": ("pretty_format", bool, "Pretty-print formatted tool use (CLAUDE__PRETTY_FORMAT)."),
    "claude_workspace_root": ("workspace_root", str, "Runs' cwd must be inside it (CLAUDE__WORKSPACE_ROOT)."),
    "max_concurrent_runs": (
        "max_concurrent_runs", int, "Runs one sdk-worker does at once (CLAUDE__MAX_CONCURRENT_RUNS).",
    ),
}
LIST_FLAGS = ("claude_code_options_allowed_tools", "claude_code_options_disallowed_tools")

#: What the flags of the running command set, as ``load_settings`` keywords (it adds them).
OVERRIDES: dict[str, Any] = {}


def _param(name: str, kind: type, help_text: str) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        option = typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
    else:
        option = typer.Option(flag, help=help_text)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def overrides_from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The flags that were given, as ``load_settings`` keywords (``claude__options__cwd=...``)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is not None:
            split = name in LIST_FLAGS
            out["claude__" + FLAGS[name][0]] = [v.strip() for v in value.split(",") if v.strip()] if split else value
    return out


def with_claude_flags(fn: F) -> F:
    """Give the command ``fn`` the SDK-mode flags; their values land in :data:`OVERRIDES`."""
    signature = inspect.signature(fn, eval_str=True)
    params = [*signature.parameters.values(), *(_param(n, k, h) for n, (_p, k, h) in FLAGS.items())]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name, None) for name in FLAGS}
        OVERRIDES.clear()
        OVERRIDES.update(overrides_from_flags(flags))
        return fn(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must see the new signature, not fn's
    return wrapper  # type: ignore[return-value]
