"""Named upstream accounts: Claude subscriptions (OAuth), linked Claude CLI logins, API keys.

One file per account, ``<data dir>/accounts/<name>.json`` (mode 0600, so two replicas refreshing
two accounts never overwrite each other), holding its description and, without an OS keyring,
its secret; nothing secret goes to Redis. A ``claude_cli`` account owns no secret: it points at
the CLI's credentials and writes each rotated pair back there, so the CLI keeps working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ccproxy_auth.claude_credentials import (
    ClaudeOAuth,
    CredentialsError,
    CredentialStore,
    FileStore,
    KeyringStore,
    keyring_json,
    oauth_in,
    read_json,
    write_private_json,
)
from ccproxy_core.logging import register_secret
from ccproxy_core.settings import Settings

log = logging.getLogger(__name__)

AccountKind = Literal["oauth", "claude_cli", "api_key"]
KEYRING_SERVICE = "ccproxy"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class AccountError(Exception):
    """An account operation cannot be done; the message says why (and holds no secret)."""


class Account(BaseModel):
    """What may be said about an account without revealing it."""

    name: str
    kind: AccountKind
    created_at: float = Field(default_factory=time.time)
    subscription_type: str | None = None
    scopes: list[str] = Field(default_factory=list)
    #: ``claude_cli`` only: where the CLI keeps its login (``file:/path`` or ``keyring``).
    source: str | None = None
    #: Lower first, for the fill-first strategy; then by creation time.
    priority: int = 0
    disabled: bool = False


def check_name(name: str) -> str:
    name = name.strip().lower()
    if not NAME_PATTERN.match(name):
        raise AccountError(
            f"invalid account name {name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 63)"
        )
    return name


def keyring_usable() -> bool:
    """True when a real OS keyring backend exists (not the fail/null/chained-with-nothing ones)."""
    try:
        import keyring
        from keyring.backends import chainer, fail
    except ImportError:
        return False
    try:
        backend = keyring.get_keyring()
    except Exception:
        return False
    if isinstance(backend, fail.Keyring):
        return False
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return False
    return "null" not in type(backend).__module__


class AccountStore:
    """The accounts of this deployment, on disk under the data directory (the auth volume)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.data_dir) / "accounts"
        backend = settings.auth.secret_backend
        self.use_keyring = backend == "keyring" or (backend == "auto" and keyring_usable())
        #: Where the secrets are: "keyring", or "file" (inside each account's file).
        self.secret_backend = "keyring" if self.use_keyring else "file"

    def path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.json"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            return read_json(path)
        except CredentialsError as exc:
            raise AccountError(str(exc)) from exc

    def list(self) -> list[Account]:
        """Every account, in fill-first order (priority, then age)."""
        found: list[Account] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob("*.json")):
            try:
                doc = self._read(path)
            except AccountError as exc:
                log.warning("skipping account file: %s", exc)
                continue
            if doc and isinstance(doc.get("account"), dict):
                found.append(Account.model_validate(doc["account"]))
        return sorted(found, key=lambda a: (a.priority, a.created_at, a.name))

    def get(self, name: str) -> Account | None:
        doc = self._read(self.path(name))
        return Account.model_validate(doc["account"]) if doc and "account" in doc else None

    def version(self) -> tuple[tuple[str, int], ...]:
        """Changes whenever an account is added, removed or rewritten (cheap: stat only)."""
        if not self.root.is_dir():
            return ()
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in self.root.glob("*.json")))

    def secret(self, name: str) -> dict[str, Any] | None:
        doc = self._read(self.path(name))
        if doc is None:
            return None
        secret = doc.get("secret")
        if self.use_keyring:
            secret = keyring_json(KEYRING_SERVICE, f"account:{name}", f"the keyring entry of account {name}")
        if not isinstance(secret, dict):
            return None
        for value in secret.values():
            if isinstance(value, str):
                register_secret(value)
        return secret

    def save(self, account: Account, secret: dict[str, Any] | None = None) -> Account:
        """Write ``account``; one added again keeps its age and priority (its place in the fill-first order)."""
        path = self.path(account.name)
        doc: dict[str, Any] = self._read(path) or {}
        kept = {k: v for k, v in (doc.get("account") or {}).items() if k in ("created_at", "priority")}
        account = account.model_copy(update=kept)
        doc["account"] = account.model_dump(mode="json")
        if secret is not None and self.use_keyring:
            import keyring

            keyring.set_password(KEYRING_SERVICE, f"account:{account.name}", json.dumps(secret))
            doc.pop("secret", None)
        elif secret is not None:
            doc["secret"] = secret
        write_private_json(path, doc)
        return account

    def remove(self, name: str) -> bool:
        path = self.path(name)
        if not path.exists():
            return False
        if self.use_keyring:
            import keyring
            from keyring.errors import PasswordDeleteError

            with contextlib.suppress(PasswordDeleteError):
                keyring.delete_password(KEYRING_SERVICE, f"account:{check_name(name)}")
        path.unlink()
        return True

    def add_oauth(self, name: str, oauth: ClaudeOAuth) -> Account:
        account = Account(name=check_name(name), kind="oauth", subscription_type=oauth.subscription_type,
                          scopes=oauth.scopes)
        return self.save(account, {"claudeAiOauth": oauth.dump()})

    def add_api_key(self, name: str, api_key: str) -> Account:
        name = check_name(name)
        if not api_key.strip():
            raise AccountError("the API key is empty")
        register_secret(api_key)
        return self.save(Account(name=name, kind="api_key"), {"api_key": api_key.strip()})

    def link_cli(self, name: str, source: CredentialStore) -> Account:
        """An account that uses (and writes back) the Claude CLI's own login."""
        name = check_name(name)
        found = source.load()
        if found is None:
            raise AccountError(f"no Claude CLI login found in {source.name}; run `claude` and /login first")
        account = Account(name=name, kind="claude_cli", source=source.name,
                          subscription_type=found.subscription_type, scopes=found.scopes)
        return self.save(account)

    def credential_store(self, account: Account) -> CredentialStore:
        if account.kind == "claude_cli":
            source = account.source or ""
            if source == "keyring":
                return KeyringStore()
            if source.startswith("file:"):
                return FileStore(Path(source.removeprefix("file:")))
            raise AccountError(f"account {account.name}: unknown credential source {source!r}")
        if account.kind == "oauth":
            return OwnedStore(self, account.name)
        raise AccountError(f"account {account.name} is an API key, not an OAuth login")


class OwnedStore:
    """A subscription login that ccproxy itself owns (from ``auth login`` or a copied import)."""

    def __init__(self, accounts: AccountStore, name: str) -> None:
        self._accounts = accounts
        self.account = name
        self.name = f"ccproxy:{accounts.secret_backend}"

    def load(self) -> ClaudeOAuth | None:
        return oauth_in(self._accounts.secret(self.account), f"account {self.account}")

    def save(self, oauth: ClaudeOAuth) -> None:
        account = self._accounts.get(self.account)
        if account is None:
            raise CredentialsError(f"account {self.account} was removed")
        self._accounts.save(account, {"claudeAiOauth": oauth.dump()})
