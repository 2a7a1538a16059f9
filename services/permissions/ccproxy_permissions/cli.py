"""``ccproxy permission-handler``: answer Claude Code's tool-permission prompts from a terminal."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ccproxy_core.cli import load_settings


def permission_handler(
    url: Annotated[
        str | None, typer.Option(help="ccproxy's address (default: http://SERVER__HOST:SERVER__PORT).")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(envvar="CCPROXY_API_KEY", help="Your client key (default: SECURITY__AUTH_TOKEN)."),
    ] = None,
) -> None:
    """Approve or deny Claude Code's tool uses (SDK mode) from this terminal: y / n / e(dit)."""
    from ccproxy_permissions.handler import TerminalHandler

    settings = load_settings()
    if url is None:
        url = f"http://{settings.server.host}:{settings.server.port}"
    if key is None and settings.security.auth_token is not None:
        key = settings.security.auth_token.get_secret_value()
    try:
        code = asyncio.run(TerminalHandler(url, key).run())
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """The ``ccproxy.commands`` entry point."""
    app.command("permission-handler")(permission_handler)
