"""``ccproxy auth …`` (upstream accounts) and ``ccproxy keys …`` (client keys), on the auth
service's own state: account files under the data directory, pool state and keys in Redis
(``REDIS__URL``). No command prints a secret, except ``keys create``, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ccproxy_auth.accounts import AccountError, AccountStore, FileStore, cli_stores
from ccproxy_core.cli import fail, load_settings
from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import Settings
from ccproxy_core.tokens import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from ccproxy_auth.keys import KeyStore
    from ccproxy_auth.pool import AccountPool, AccountState

auth_app = typer.Typer(help="Upstream accounts: log in, import, add API keys, status.", no_args_is_help=True)
keys_app = typer.Typer(help="Client keys: one per team member, with limits and budgets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """The ``ccproxy.commands`` entry point: ``ccproxy auth …`` and ``ccproxy keys …``."""
    app.add_typer(auth_app, name="auth")
    app.add_typer(keys_app, name="keys")


@contextlib.contextmanager
def _failing() -> Iterator[None]:
    """An account or key that cannot be changed as asked: exit with the reason."""
    from ccproxy_auth.keys import KeyAdminError
    from ccproxy_auth.oauth import LoginError

    try:
        yield
    except (AccountError, KeyAdminError, LoginError) as exc:
        fail(str(exc))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _pool(settings: Settings) -> AccountPool:
    from ccproxy_auth.pool import AccountPool
    from ccproxy_core.redis import connect

    return AccountPool(settings, connect(settings.redis))


@auth_app.command()
def login(
    account: Annotated[str, typer.Option(help="Name of the account to create or log in again.")] = DEFAULT_ACCOUNT,
    manual: Annotated[bool, typer.Option(help="Paste code#state instead of a local callback.")] = False,
    browser: Annotated[bool, typer.Option(help="Open the login page in a browser.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the callback.")] = 300.0,
) -> None:
    """Log in to a Claude subscription (OAuth, PKCE) and store it as a named account."""
    import ccproxy_auth.oauth as flow

    settings = load_settings()
    store = AccountStore(settings)
    pending = flow.start(settings.oauth, manual=manual)
    typer.echo(f"Open this address to log in to your Claude account:\n\n{pending.url}\n")
    sys.stdout.flush()
    has_display = sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if browser and has_display:
        import webbrowser

        webbrowser.open(pending.url)

    async def run() -> Any:
        if manual:
            pasted = await asyncio.to_thread(typer.prompt, "Paste the code shown after you authorize (code#state)")
            code = flow.parse_pasted(pasted, pending)
        else:
            typer.echo(f"Waiting for the login callback on {pending.redirect_uri} …")
            sys.stdout.flush()
            code = await flow.wait_for_callback(pending, timeout)
        return await flow.finish(settings.oauth, pending, code)

    with _failing():
        saved = store.add_oauth(account, asyncio.run(run()))
    if settings.redis.url is not None:  # a new login makes an unhealthy account usable again
        try:
            asyncio.run(_pool(settings).clear(saved.name))
        except Exception as exc:  # Redis down: the mark clears itself on the next success anyway
            typer.echo(f"note: could not clear the account's marks in Redis ({type(exc).__name__})", err=True)
    typer.echo(f"Logged in: account {saved.name} (secrets in the {store.secret_backend} store).")


@auth_app.command("import")
def import_(
    account: Annotated[str, typer.Option(help="Name of the account.")] = "claude-cli",
    from_file: Annotated[
        str | None, typer.Option("--from", help="Copy the login from this .credentials.json instead.")
    ] = None,
) -> None:
    """Use the Claude CLI's login as an account.

    By default the account is linked: it reads the CLI's credentials where the CLI keeps them and
    writes each rotated token pair back there, so the CLI keeps working. ``--from FILE`` copies a
    login (e.g. from another machine) into ccproxy's own store instead.
    """
    settings = load_settings()
    store = AccountStore(settings)
    with _failing():
        if from_file:
            found = FileStore(Path(from_file)).load()
            if found is None:
                fail(f"{from_file} holds no claudeAiOauth login")
            saved = store.add_oauth(account, found)
            typer.echo(f"Imported a copy: account {saved.name}. The source file's refresh token will stop "
                       "working once ccproxy refreshes; log that CLI in again if you keep using it.")
            return
        for source in cli_stores(settings):
            if source.load() is not None:
                saved = store.link_cli(account, source)
                typer.echo(f"Linked account {saved.name} to the Claude CLI's login ({source.name}).")
                return
    fail("no Claude CLI login found (run `claude` and /login, or pass --from FILE)")


@auth_app.command("add-key")
def add_key(
    account: Annotated[str, typer.Option(help="Name of the account.")] = "api",
    key: Annotated[str | None, typer.Option(help="The Anthropic API key; '-' reads stdin; unset: prompt.")] = None,
) -> None:
    """Add an Anthropic API key as an account (sent upstream as x-api-key)."""
    settings = load_settings()
    if key == "-":
        key = sys.stdin.readline().strip()
    elif key is None:
        key = typer.prompt("Anthropic API key", hide_input=True)
    with _failing():
        saved = AccountStore(settings).add_api_key(account, key or "")
    typer.echo(f"Added API-key account {saved.name}.")


def _accounts(settings: Settings) -> list[AccountState]:
    from ccproxy_core.redis import UNAVAILABLE, redacted

    try:
        return asyncio.run(_pool(settings).accounts())
    except UNAVAILABLE as exc:
        fail(f"Redis ({redacted(settings.redis.url)}) is unreachable: {type(exc).__name__}")


def _print_account(row: AccountState, now: float) -> None:
    expires: str | None = None
    cooldown: str | None = None
    if row.expires_at:
        left = row.expires_at - now
        state = f"in {left / 3600:.1f} h" if left > 0 else "expired (refreshes on next use)"
        expires = f"{_when(row.expires_at)} ({state})"
    if row.cooldown:
        left = max(0, row.cooldown.until - now)
        cooldown = f"until {_when(row.cooldown.until)} ({row.cooldown.reason}, {left:.0f} s left)"
    quota = []
    for window, q in sorted(row.quota.items()):
        text = f"{window} {q.utilization * 100:.0f}%" if q.utilization is not None else window
        if q.status and q.status != "allowed":
            text += f" {q.status}"
        quota.append(text + (f" (resets {_when(q.reset)})" if q.reset else ""))
    lines = {
        "health": "healthy" if row.healthy else f"UNHEALTHY ({row.problem or 'unknown'})",
        "source": row.source, "expires": expires, "cooldown": cooldown, "quota": ", ".join(quota),
        "limited": f"last at {_when(row.last_limited_at)}" if row.last_limited_at else None,
    }
    typer.echo(f"{row.name}: {row.kind}" + (f" ({row.subscription_type})" if row.subscription_type else ""))
    for label, value in lines.items():
        if value:
            typer.echo(f"  {label + ':':<10}{value}")


@auth_app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each account's kind, subscription, expiry, health, cooldown and quota (no secrets)."""
    rows = _accounts(load_settings())
    if as_json:
        typer.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    for row in rows:
        _print_account(row, time.time())


auth_app.command("info", help="Same as `auth status` (the name earlier ccproxy versions used).")(status)


@auth_app.command()
def validate() -> None:
    """Exit 0 if at least one account can serve requests, 1 otherwise."""
    rows = _accounts(load_settings())
    for row in rows:
        why = row.problem or ("cooling down" if row.cooldown else "unknown")
        typer.echo(f"{row.name}: " + ("ok" if row.available else f"NOT usable: {why}"))
    if not any(row.available for row in rows):
        raise typer.Exit(1)


@auth_app.command()
def refresh(
    account: Annotated[str | None, typer.Option(help="Only this account (default: every OAuth account).")] = None,
) -> None:
    """Refresh OAuth tokens now (single-flight with running services via the Redis lock)."""
    pool = _pool(load_settings())
    names = [account] if account else [m.account.name for m in pool.members() if m.account.kind != "api_key"]
    failed = False
    for name in names:
        try:
            credential = asyncio.run(pool.refresh(name))
        except ProxyError as exc:
            typer.echo(f"{name}: refresh failed: {exc.message}", err=True)
            failed = True
        else:
            typer.echo(f"{name}: refreshed, valid until {_when(credential.expires_at)}")
    if failed:
        raise typer.Exit(1)


@auth_app.command()
def logout(
    account: Annotated[str, typer.Option(help="The account to remove.")] = DEFAULT_ACCOUNT,
) -> None:
    """Remove an account and its stored secrets (a linked CLI login itself is left alone)."""
    with _failing():
        removed = AccountStore(load_settings()).remove(account)
    if not removed:
        fail(f"no account named {account!r}")
    typer.echo(f"Removed account {account}.")


def _keys(settings: Settings) -> KeyStore:
    if settings.redis.url is None:
        fail("client keys live in Redis: set REDIS__URL (the stack sets it), or use "
              "SECURITY__AUTH_TOKEN for a single shared token")
    from ccproxy_auth.keys import KeyStore
    from ccproxy_core.redis import connect

    return KeyStore(connect(settings.redis), settings.redis.key_prefix)


def parse_expiry(text: str) -> float:
    """``30d``, ``12h``, ``90m`` from now, or a date ``2026-12-31`` (UTC midnight) / ISO time."""
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip())
    if match:
        return time.time() + int(match.group(1)) * {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise typer.BadParameter("use 30d, 12h, 90m, 2026-12-31 or an ISO time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@keys_app.command()
def create(
    name: Annotated[str, typer.Option(help="Who the key is for (unique among active keys).")],
    accounts: Annotated[str | None, typer.Option(help="Comma-separated upstream accounts it may use.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Spend cap in USD per period (list prices).")] = None,
    period: Annotated[str | None, typer.Option(help="Budget period: day, week or month (default month).")] = None,
    expires: Annotated[str | None, typer.Option(help="30d, 12h, 2026-12-31, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a client key. The key is printed once; only its hash is stored."""
    if period is not None and period not in ("day", "week", "month"):
        raise typer.BadParameter("period must be day, week or month")
    store = _keys(load_settings())
    expires_at = parse_expiry(expires) if expires else None
    allowed = accounts.split(",") if accounts else None
    with _failing():
        info, plain = asyncio.run(store.create(name, accounts=allowed, rpm=rpm, tpm=tpm, budget_usd=budget_usd,
                                               period=period, expires_at=expires_at))
    if as_json:
        typer.echo(json.dumps({**info.model_dump(), "key": plain}))
        return
    typer.echo(f"Created key {info.id} for {info.name}. Copy it now, it is not shown again:\n")
    typer.echo(f"  {plain}\n")


@keys_app.command("list")
def list_(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every key: limits, budget, and spend (this period and in total). Never the key itself."""
    rows = asyncio.run(_keys(load_settings()).listing(include_revoked))
    if as_json:
        typer.echo(json.dumps([row.model_dump() for row in rows], indent=2))
        return
    if not rows:
        typer.echo("No client keys.")
        return
    for row in rows:
        limits = [f"{row.rpm} rpm"] if row.rpm else []
        if row.tpm:
            limits.append(f"{row.tpm} tpm")
        if row.budget_usd:
            limits.append(f"${row.period_spent_usd or 0:.4f} of ${row.budget_usd:.2f}/{row.period}")
        state = "revoked" if row.revoked_at else ("active" if row.usable() else "expired")
        typer.echo(
            f"{row.id}  {row.name:<16} …{row.hint}  {state:<8} spent ${row.spent_usd:.4f} in {row.requests} requests"
            + (f"  [{', '.join(limits)}]" if limits else "")
            + (f"  accounts: {','.join(row.accounts)}" if row.accounts else "")
            + (f"  expires {_when(row.expires_at)}" if row.expires_at else "")
        )


@keys_app.command()
def revoke(key: Annotated[str, typer.Argument(help="The key's id (k_…) or name.")]) -> None:
    """Revoke a key: every gateway refuses it within SECURITY__KEY_CACHE_SECONDS."""
    with _failing():
        info = asyncio.run(_keys(load_settings()).revoke(key))
    typer.echo(f"Revoked key {info.id} ({info.name}).")
