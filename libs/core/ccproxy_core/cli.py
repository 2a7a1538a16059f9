"""The ``ccproxy`` command line: one entry point for every way ccproxy runs.

``serve`` wires gateway, api-forwarder and auth into one process (it is the composition root,
so it imports the service packages lazily; no service imports another).
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ccproxy_core.cli_auth import auth_app, keys_app
from ccproxy_core.cli_sdk import OVERRIDES as CLAUDE_FLAG_OVERRIDES
from ccproxy_core.cli_sdk import deep_merge, with_claude_flags
from ccproxy_core.server import StartupError, serve_app
from ccproxy_core.settings import Settings, is_loopback

app = typer.Typer(help="ccproxy: use Claude through the Anthropic and OpenAI APIs.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")
app.add_typer(keys_app, name="keys")


def fail(message: str) -> None:
    typer.echo(f"ccproxy: {message}", err=True)
    raise typer.Exit(2)


def load_settings(**overrides: Any) -> Settings:
    """Settings with CLI flags on top; a bad config file is one clear line, not a traceback."""
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition("__")
        nested.setdefault(section, {})[key] = value
    init: dict[str, Any] = deep_merge(nested, CLAUDE_FLAG_OVERRIDES)
    try:
        return Settings(**init)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        fail(f"invalid setting {where}: {first['msg']} (check the environment, .env and ccproxy.toml)")
    except (ValueError, OSError) as exc:  # malformed TOML or unreadable .env
        fail(f"cannot read the configuration: {exc}")
    raise AssertionError("unreachable")


def check_bind(settings: Settings) -> None:
    if not is_loopback(settings.server.host) and settings.security.auth_token is None:
        fail(
            f"refusing to listen on {settings.server.host} without client authentication: anyone on "
            "the network could use your Claude account. Set SECURITY__AUTH_TOKEN (make one with "
            "`ccproxy generate-token`) or bind to 127.0.0.1."
        )


def build_local_app(settings: Settings) -> Any:
    """Gateway + api-forwarder + auth in one process (the embedded defaults)."""
    from starlette.applications import Starlette

    from ccproxy_analytics.service import Analytics
    from ccproxy_auth.admin import local_accounts
    from ccproxy_core.redis import connect
    from ccproxy_forwarder.forwarder import ApiForwarder
    from ccproxy_gateway.app import Gateway, create_app
    from ccproxy_gateway.logs import log_viewer
    from ccproxy_gateway.sdk_routes import SdkRoutes
    from ccproxy_permissions.embedded import EmbeddedPermissions
    from ccproxy_sdk_worker.permissions import permission_hook
    from ccproxy_sdk_worker.worker import in_process as sdk_worker

    # The account pool (named accounts, else the CLI login) and, with REDIS__URL, client keys.
    tokens, keys = local_accounts(settings)
    forwarder = ApiForwarder(settings.anthropic, tokens)
    gateway = Gateway(settings, forwarder, tokens.status, keys=keys)
    tokens.attach_metrics(gateway.metrics)
    # The access log: gateway -> (embedded) Redis stream -> analytics -> chDB, /logs/* mounted here.
    analytics = Analytics(settings, metrics=gateway.metrics, authorize=log_viewer(gateway.client_auth))
    # SDK mode: the same arq worker as `ccproxy run sdk-worker`, in process, on the embedded Redis.
    redis = connect(settings.redis)
    sdk = SdkRoutes(gateway, redis)
    # Tool permissions: /permissions/* on this app, the worker's prompts answered in process.
    permissions = EmbeddedPermissions(settings, redis, keys)
    web = create_app(gateway, extra_routes=[*analytics.routes(), *sdk.routes(), *permissions.routes()])

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await analytics.start()
        await permissions.start()
        async with sdk_worker(settings, redis, permission_hook(permissions.gate)):
            yield
        await permissions.stop()
        await gateway.access_log.aclose()
        await analytics.stop()
        await forwarder.aclose()

    web.router.lifespan_context = lifespan
    return web


def startup_report(settings: Settings) -> None:
    """Stop on credentials that exist but cannot be read; warn when there are none."""
    import logging

    from ccproxy_auth.claude_credentials import CredentialsError
    from ccproxy_auth.manager import CredentialManager

    manager = CredentialManager(settings)
    log = logging.getLogger("ccproxy")
    if settings.auth.api_key is not None:
        log.info("credentials: Anthropic API key from settings")
        return
    try:
        found = next((c for c in (store.load() for store in manager.stores()) if c is not None), None)
    except CredentialsError as exc:
        fail(f"{exc}; fix or remove the file, then log in again with `claude`")
        return
    if found is None:
        log.warning("no Claude credentials found: requests will fail until you log in with `claude` "
                    "(or set AUTH__API_KEY)")
    else:
        log.info("credentials: Claude subscription (%s)", found.subscription_type or "unknown plan")


@app.command()
@with_claude_flags
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (SERVER__HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (SERVER__PORT).")] = None,
    auth_token: Annotated[
        str | None, typer.Option("--auth-token", help="Client token (SECURITY__AUTH_TOKEN).")
    ] = None,
) -> None:
    """Run everything in one process, with embedded defaults."""
    from ccproxy_core import logging as cclog

    settings = load_settings(server__host=host, server__port=port, security__auth_token=auth_token)
    cclog.configure(settings.server.log_level)
    check_bind(settings)
    startup_report(settings)
    try:
        serve_app(build_local_app(settings), settings.server.host, settings.server.port, settings.server.log_level,
                  settings.server.forwarded_allow_ips)
    except StartupError as exc:
        fail(str(exc))


@app.command("generate-token")
def generate_token() -> None:
    """Print a new strong client token (for SECURITY__AUTH_TOKEN)."""
    typer.echo("cc-" + secrets.token_urlsafe(32))


@app.command("permission-handler")
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
    from ccproxy_permissions.handler import run

    settings = load_settings()
    if url is None:
        url = f"http://{settings.server.host}:{settings.server.port}"
    if key is None and settings.security.auth_token is not None:
        key = settings.security.auth_token.get_secret_value()
    try:
        code = run(url, key)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


#: ``ccproxy run NAME``: where each service's app factory is (imported only when that one runs).
SERVICES: dict[str, str] = {
    "gateway": "ccproxy_gateway.service:create_service_app",
    "api-forwarder": "ccproxy_forwarder.service:create_service_app",
    "auth": "ccproxy_auth.service:create_service_app",
    "analytics": "ccproxy_analytics.service:create_service_app",
    "permissions": "ccproxy_permissions.service:create_service_app",
    "sdk-worker": "ccproxy_sdk_worker.worker:main",
}


@app.command("run")
@with_claude_flags
def run_service(
    service: Annotated[str, typer.Argument(help="The service to run: " + ", ".join(SERVICES))],
    host: Annotated[str | None, typer.Option(help="Address to bind (SERVER__HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (SERVER__PORT).")] = None,
) -> None:
    """Run one service of the stack (what each compose container and `ccproxy up` run)."""
    import importlib

    from ccproxy_core import logging as cclog

    if service not in SERVICES:
        fail(f"unknown service {service!r}; one of: {', '.join(SERVICES)}")
    settings = load_settings(server__host=host, server__port=port)
    cclog.configure(settings.server.log_level)
    if service == "gateway":
        check_bind(settings)
    module_name, _, factory = SERVICES[service].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"the {service} service is not installed here (missing module {exc.name})")
    if service == "sdk-worker":  # an arq consumer, not a web app
        module.main(settings)
        return
    try:
        web = getattr(module, factory)(settings)
        serve_app(web, settings.server.host, settings.server.port, settings.server.log_level,
                  settings.server.forwarded_allow_ips)
    except StartupError as exc:
        fail(f"{service}: {exc}")


@app.command()
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
    """Run the stack as local processes: Redis, auth, api-forwarder, gateway, behind Traefik."""
    from ccproxy_core import stack
    from ccproxy_core.server import bind

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


@app.command()
def healthcheck(
    url: Annotated[str | None, typer.Option(help="Default: this host's service on SERVER__PORT.")] = None,
) -> None:
    """Exit 0 when the service answers /health (each Docker image's HEALTHCHECK)."""
    from ccproxy_core.stack import http_ok

    target = url or f"http://127.0.0.1:{load_settings().server.port}/health"
    raise typer.Exit(0 if http_ok(target, timeout=5) else 1)


@app.command("init-env")
def init_env(
    example: Annotated[Path, typer.Option(help="The template.")] = Path(".env.example"),
    output: Annotated[Path, typer.Option(help="The file compose reads.")] = Path(".env"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write .env for `docker compose` from .env.example, with fresh secrets and your user id."""
    from ccproxy_core.stack import render_env

    if output.exists() and not force:
        fail(f"{output} exists; keep it, or pass --force to replace it (its secrets change)")
    try:
        text = example.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {example}: {exc.strerror}")
        return
    output.write_text(render_env(text), encoding="utf-8")
    output.chmod(0o600)
    typer.echo(f"wrote {output}; clients authenticate with the SECURITY__AUTH_TOKEN in it")


def main() -> None:
    try:
        app()
    except StartupError as exc:
        typer.echo(f"ccproxy: {exc}", err=True)
        sys.exit(2)
