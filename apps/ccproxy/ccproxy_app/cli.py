"""The commands that need several services: ``serve``, ``up`` and ``init-env``. They join ``ccproxy_core.cli``
through this package's ``ccproxy.commands`` entry point, so only a full install (``uv sync``) has them."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Annotated

import typer

from ccproxy_app import stack
from ccproxy_core import logging as cclog
from ccproxy_core.cli import check_bind, fail, load_settings, with_claude_flags
from ccproxy_core.server import StartupError, bind, serve_app
from ccproxy_core.settings import Settings

Host = Annotated[str | None, typer.Option(help="Address to bind (SERVER__HOST).")]
Port = Annotated[int | None, typer.Option(help="Public port (SERVER__PORT).")]
AuthToken = Annotated[str | None, typer.Option("--auth-token", help="Client token (SECURITY__AUTH_TOKEN).")]


def startup_report(settings: Settings) -> None:
    """Stop on credentials that exist but cannot be read; warn when there are none."""
    from ccproxy_auth.accounts import CredentialsError, cli_stores

    log = logging.getLogger("ccproxy")
    if settings.auth.api_key is not None:
        log.info("credentials: Anthropic API key from settings")
        return
    try:
        found = next(filter(None, (store.load() for store in cli_stores(settings))), None)
    except CredentialsError as exc:
        fail(f"{exc}; fix or remove the file, then log in again with `claude`")
    if found is None:
        log.warning("no Claude credentials found: requests will fail until you log in with `claude` "
                    "(or set AUTH__API_KEY)")
    else:
        log.info("credentials: Claude subscription (%s)", found.subscription_type or "unknown plan")


@with_claude_flags
def serve(host: Host = None, port: Port = None, auth_token: AuthToken = None) -> None:
    """Run everything in one process, with embedded defaults."""
    from ccproxy_app.local import build_local_app

    settings = load_settings(server__host=host, server__port=port, security__auth_token=auth_token)
    cclog.configure(settings.server.log_level)
    check_bind(settings)
    startup_report(settings)
    try:
        serve_app(build_local_app(settings), settings.server)
    except StartupError as exc:
        fail(str(exc))


def up(
    host: Host = None,
    port: Port = None,
    auth_token: AuthToken = None,
    routes: Annotated[Path | None, typer.Option(help="Traefik routing file (default: the repo's one).")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Write each service's output to DIR/NAME.log.")] = None,
) -> None:
    """Run the stack as local processes: Redis, the six services, behind Traefik."""
    settings = load_settings(server__host=host, server__port=port, security__auth_token=auth_token)
    check_bind(settings)
    configured = settings.security.internal_secret
    host, port = settings.server.host, settings.server.port
    try:
        bind(host, port).close()  # a busy port: one clear line now
        services, url = stack.plan_stack(
            host=host, port=port, redis_url=settings.redis.url, redis_dir=settings.data_dir / "redis",
            internal_secret=configured.get_secret_value() if configured else secrets.token_urlsafe(32),
            routes=routes or stack.find_routes_file(),
            extra_env={"SECURITY__AUTH_TOKEN": auth_token} if auth_token else {},
        )
        asyncio.run(stack.Supervisor(services, log_dir=log_dir).run(url))
    except StartupError as exc:
        fail(str(exc))


def init_env(
    example: Annotated[Path, typer.Option(help="The template.")] = Path(".env.example"),
    output: Annotated[Path, typer.Option(help="The file compose reads.")] = Path(".env"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write .env for `docker compose` from .env.example, with fresh secrets and your user id,
    and the sdk-worker's secrets as files in secrets/ beside it."""
    if output.exists() and not force:
        fail(f"{output} exists; keep it, or pass --force to replace it (its secrets change)")
    try:
        text = example.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {example}: {exc.strerror}")
    secrets_dir = (output.parent / "secrets").absolute()
    rendered, values = stack.render_env(text, secrets_dir=secrets_dir)
    if missing := [n for n in ("SECURITY__INTERNAL_SECRET", "REDIS_PASSWORD") if not values.get(n)]:
        fail(f"{example} has no line for {', '.join(missing)}")
    output.write_text(rendered, encoding="utf-8")
    output.chmod(0o600)
    # Compose mounts these into the sdk-worker (compose.yaml `secrets:`); they repeat what .env holds.
    stack.write_worker_secrets(Path(values.get("CCPROXY_SECRETS_HOST_DIR") or secrets_dir), values)
    typer.echo(f"wrote {output} and {secrets_dir}/; clients authenticate with the SECURITY__AUTH_TOKEN in {output}")


def register(app: typer.Typer) -> None:
    """The ``ccproxy.commands`` entry point."""
    app.command()(serve)
    app.command()(up)
    app.command("init-env")(init_env)
