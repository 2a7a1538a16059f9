"""The ``ccproxy`` command's scaffold, in every image: the installed packages add their services
(``ccproxy.services``, for ``ccproxy run``) and commands (``ccproxy.commands``) through entry points,
so each image's ``ccproxy`` offers what it can run (docs/architecture.md)."""

from __future__ import annotations

import functools
import inspect
import secrets
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from ccproxy_core.server import StartupError, http_ok, serve_app
from ccproxy_core.settings import Settings, is_loopback

app = typer.Typer(help="ccproxy: use Claude through the Anthropic and OpenAI APIs.", no_args_is_help=True)

SERVICES: dict[str, EntryPoint] = dict(sorted((ep.name, ep) for ep in entry_points(group="ccproxy.services")))


F = TypeVar("F", bound=Callable[..., Any])

#: Earlier versions' SDK-mode flags: ``CLAUDE__*`` settings under their old names (a list comma-separated).
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

OVERRIDES: dict[str, Any] = {}


def _param(name: str, setting: str, kind: type) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    help_text = f"CLAUDE__{setting.upper()}" + (", comma-separated" if kind is list else "")
    option = typer.Option(f"{flag}/--no-{flag[2:]}" if kind is bool else flag, help=help_text, show_default=False)
    value_type = str if kind is list else kind
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[value_type | None, option]
    )


def with_claude_flags(fn: F) -> F:
    """Adds :data:`FLAGS` to a command (``serve``, ``run``) without it listing them."""
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


def fail(message: str) -> NoReturn:
    typer.echo(f"ccproxy: {message}", err=True)
    raise typer.Exit(2)


def load_settings(**overrides: Any) -> Settings:
    """Settings with CLI flags on top (``section__key=value``, None: not given); a bad config
    file is one clear line, not a traceback."""
    init: dict[str, Any] = {}
    for dotted, value in {**overrides, **OVERRIDES}.items():
        if value is None:
            continue
        *path, key = dotted.split("__")
        node = init
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    try:
        return Settings(**init)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        fail(f"invalid setting {where}: {first['msg']} (check the environment, .env and ccproxy.toml)")
    except (ValueError, OSError) as exc:  # malformed TOML or unreadable .env
        fail(f"cannot read the configuration: {exc}")


def check_bind(settings: Settings) -> None:
    if not is_loopback(settings.server.host) and settings.security.auth_token is None:
        fail(
            f"refusing to listen on {settings.server.host} with no client authentication: anyone on "
            "the network could use your Claude account. Set SECURITY__AUTH_TOKEN (an empty or blank "
            "one is none; make one with `ccproxy generate-token`) or bind to 127.0.0.1."
        )


@app.command("generate-token")
def generate_token() -> None:
    """Print a new strong client token (for SECURITY__AUTH_TOKEN)."""
    typer.echo("cc-" + secrets.token_urlsafe(32))


@app.command("run")
@with_claude_flags
def run_service(
    service: Annotated[str, typer.Argument(help="The service to run: " + (", ".join(SERVICES) or "none installed"))],
    host: Annotated[str | None, typer.Option(help="Address to bind (SERVER__HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (SERVER__PORT).")] = None,
) -> None:
    """Run one service of the stack (what each compose container and `ccproxy up` run)."""
    from ccproxy_core import logging as cclog

    if service not in SERVICES:
        fail(f"unknown service {service!r}; installed here: {', '.join(SERVICES) or 'none'}")
    settings = load_settings(server__host=host, server__port=port)
    cclog.configure(settings.server.log_level)
    if service == "gateway":
        check_bind(settings)
    try:
        factory: Callable[[Settings], Any] = SERVICES[service].load()
        web = factory(settings)
        if web is not None:  # None: a worker, which ran until it was stopped
            serve_app(web, settings.server)
    except StartupError as exc:
        fail(f"{service}: {exc}")


@app.command()
def healthcheck(
    url: Annotated[str | None, typer.Option(help="Default: this host's service on SERVER__PORT.")] = None,
) -> None:
    """Exit 0 when the service answers /health (each Docker image's HEALTHCHECK)."""
    target = url or f"http://127.0.0.1:{load_settings().server.port}/health"
    raise typer.Exit(0 if http_ok(target, timeout=5) else 1)


def main() -> None:
    for ep in entry_points(group="ccproxy.commands"):
        register: Callable[[typer.Typer], None] = ep.load()
        register(app)
    try:
        app()
    except StartupError as exc:
        typer.echo(f"ccproxy: {exc}", err=True)
        sys.exit(2)
