"""SDK mode's flags from earlier ccproxy versions (``--claude-code-options-cwd`` ...): the
``CLAUDE__*`` settings under their old names, winning over the environment like every flag.
:func:`with_claude_flags` adds them to a command (``serve``, ``run``) without it listing them."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

#: Flag -> its setting under ``CLAUDE__`` and its type (a list is given comma-separated).
FLAGS: dict[str, tuple[str, type]] = {
    "claude_code_options_cwd": ("options__cwd", str),
    "claude_code_options_permission_mode": ("options__permission_mode", str),
    "claude_code_options_model": ("options__model", str),
    "claude_code_options_max_turns": ("options__max_turns", int),
    "claude_code_options_allowed_tools": ("options__allowed_tools", list),
    "claude_code_options_disallowed_tools": ("options__disallowed_tools", list),
    "claude_code_options_append_system_prompt": ("options__append_system_prompt", str),
    "claude_code_options_max_thinking_tokens": ("options__max_thinking_tokens", int),
    "claude_sdk_message_mode": ("sdk_message_mode", str),
    "claude_sdk_pretty_format": ("pretty_format", bool),
    "claude_workspace_root": ("workspace_root", str),
    "max_concurrent_runs": ("max_concurrent_runs", int),
}

#: What the flags of the running command set, as ``load_settings`` keywords (it adds them).
OVERRIDES: dict[str, Any] = {}


def _param(name: str, setting: str, kind: type) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    help_text = f"CLAUDE__{setting.upper()}" + (", comma-separated" if kind is list else "")
    if kind is bool:
        option = typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
    else:
        option = typer.Option(flag, help=help_text)
    value_type = str if kind is list else kind
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[value_type | None, option]
    )


def with_claude_flags(fn: F) -> F:
    """Give the command ``fn`` the SDK-mode flags; their values land in :data:`OVERRIDES`."""
    signature = inspect.signature(fn, eval_str=True)
    params = [*signature.parameters.values(), *(_param(name, *spec) for name, spec in FLAGS.items())]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        OVERRIDES.clear()
        for name, (setting, kind) in FLAGS.items():
            value = kwargs.pop(name, None)
            if value is not None and kind is list:
                value = [v.strip() for v in value.split(",") if v.strip()]
            if value is not None:
                OVERRIDES["claude__" + setting] = value
        return fn(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must see the new signature, not fn's
    return wrapper  # type: ignore[return-value]
