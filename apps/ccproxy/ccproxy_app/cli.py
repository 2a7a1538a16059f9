"""The commands that need several services: ``serve``, ``up`` and ``init-env``.

They join the scaffold in ``ccproxy_core.cli`` through this package's ``ccproxy.commands``
entry point, so only a full install (``uv sync``, ``make run``) has them; an image has not.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Annotated

import typer

from ccproxy_core import logging as cclog
from ccproxy_core.cli import check_bind, fail, load_settings
from ccproxy_core.cli_sdk import with_claude_flags
from ccproxy_core.server import StartupError, bind, serve_app
from ccproxy_core.settings import Settings


def startup_report(settings: Settings) -> None:
    """Stop on credentials that exist but cannot be read; warn when there are none."""
    from ccproxy_auth.accounts import CredentialsError
    from ccproxy_auth.manager import CredentialManager

    manager = CredentialManager(settings)
    log = logging.getLogger("ccproxy")
    if settings.auth.api_key is not None:
        log.info("credentials: Anthropic API key from settings")
        return
    try:
        found = next((c for c in (store.load() for store in manager.stores) if c is not None), None)
    except CredentialsError as exc:
        fail(f"{exc}; fix or remove the file, then log in again with `claude`")
    if found is None:
        log.warning("no Claude credentials found: requests will fail until you log in with `claude` "
                    "(or set AUTH__API_KEY)")
    else:
        log.info("credentials: Claude subscription (%s)", found.subscription_type or "unknown plan")


@with_claude_flags
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (SERVER__HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (SERVER__PORT).")] = None,
    auth_token: Annotated[
        str | None, typer.Option("--auth-token", help="Client token (SECURITY__AUTH_TOKEN).")
    ] = None,
) -> None:
    """Run everything in one process, with embedded defaults."""
    from ccproxy_app.local import build_local_app

    settings = load_settings(server__host=host, server__port=port, security__auth_token=auth_token)
    cclog.configure(settings.server.log_level)
    check_bind(settings)
    startup_report(settings)
    try:
        serve_app(build_local_app(settings), settings.server.host, settings.server.port, settings.server.log_level,
                  settings.server.header_timeout, settings.server.body_timeout,
                  settings.server.forwarded_allow_ips)
    except StartupError as exc:
        fail(str(exc))


def up(
    host: Annotated[str | None, typer.Option(help="Address Traefik binds (SERVER__HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Public port (SERVER__PORT).")] = None,
    auth_token: Annotated[
        str | None, typer.Option("--auth-token", help="Client token (SECURITY__AUTH_TOKEN).")
    ] = None,
    routes: Annotated[
        Path | None, typer.Option(help="Traefik routing file (default: the repo's deploy/traefik/routes.yml).")
    ] = None,
    log_dir: Annotated[
        Path | None, typer.Option(help="Write each service's output to DIR/NAME.log instead of the terminal.")
    ] = None,
) -> None:
    """Run the stack as local processes: Redis, the six services, behind Traefik."""
    from ccproxy_app import stack

    settings = load_settings(server__host=host, server__port=port, security__auth_token=auth_token)
    check_bind(settings)
    configured = settings.security.internal_secret
    extra_env: dict[str, str] = {}
    if auth_token:
        extra_env["SECURITY__AUTH_TOKEN"] = auth_token
    try:
        bind(settings.server.host, settings.server.port).close()  # a busy port: one clear line now
        plan = stack.plan_stack(
            host=settings.server.host,
            port=settings.server.port,
            internal_secret=configured.get_secret_value() if configured else secrets.token_urlsafe(32),
            redis_url=settings.redis.url,
            redis_dir=settings.data_dir / "redis",
            routes=routes or stack.find_routes_file(),
            extra_env=extra_env,
        )
        stack.run_until_signalled(stack.Supervisor(plan.services, log_dir=log_dir), plan.url)
    except StartupError as exc:
        fail(str(exc))


def init_env(
    example: Annotated[Path, typer.Option(help="The template.")] = Path(".env.example"),
    output: Annotated[Path, typer.Option(help="The file compose reads.")] = Path(".env"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write .env for `docker compose` from .env.example, with fresh secrets and your user id,
    and the sdk-worker's secrets as files in secrets/ beside it."""
    from ccproxy_app.stack import env_values, render_env, worker_secret_files, write_secret_files

    if output.exists() and not force:
        fail(f"{output} exists; keep it, or pass --force to replace it (its secrets change)")
    try:
        text = example.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {example}: {exc.strerror}")
    secrets_dir = (output.parent / "secrets").absolute()
    rendered = render_env(text, secrets_dir=secrets_dir)
    values = env_values(rendered)
    missing = [n for n in ("SECURITY__INTERNAL_SECRET", "REDIS_PASSWORD") if not values.get(n)]
    if missing:
        fail(f"{example} has no line for {', '.join(missing)}")
    output.write_text(rendered, encoding="utf-8")
    output.chmod(0o600)
    # Compose mounts these into the sdk-worker (compose.yaml `secrets:`); they repeat what .env holds.
    write_secret_files(Path(values.get("CCPROXY_SECRETS_HOST_DIR") or secrets_dir), worker_secret_files(values))
    typer.echo(f"wrote {output} and {secrets_dir}/; clients authenticate with the SECURITY__AUTH_TOKEN in {output}")


def register(app: typer.Typer) -> None:
    """The ``ccproxy.commands`` entry point."""
    app.command()(serve)
    app.command()(up)
    app.command("init-env")(init_env)
