"""Upstream logins and where they live. An account is one file, ``<data dir>/accounts/<name>.json``
(mode 0600: two replicas refreshing two accounts never overwrite each other), with its secret unless an OS
keyring holds it; nothing secret goes to Redis. A ``claude_cli`` account points at the Claude CLI's own login
(``$CLAUDE_CONFIG_DIR/.credentials.json`` or its keyring entry) and writes each rotated pair back there."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ccproxy_core.logging import register_secret
from ccproxy_core.settings import Settings

log = logging.getLogger(__name__)

#: Keyring services: the Claude CLI's login, and the secrets of ccproxy's own accounts.
KEYRING_SERVICE = "Claude Code-credentials"
ACCOUNTS_KEYRING_SERVICE = "ccproxy"


class AccountError(Exception):
    """An account operation cannot be done; the message says why (and holds no secret)."""


class CredentialsError(AccountError):
    """The credentials exist but cannot be used (unreadable, malformed)."""


class ClaudeOAuth(BaseModel):
    """The ``claudeAiOauth`` object. Unknown keys are kept, so writing back loses nothing."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    access_token: str = Field(alias="accessToken")
    refresh_token: str | None = Field(default=None, alias="refreshToken")
    #: Epoch milliseconds.
    expires_at: int | None = Field(default=None, alias="expiresAt")
    scopes: list[str] = Field(default_factory=list)
    subscription_type: str | None = Field(default=None, alias="subscriptionType")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def oauth_in(doc: dict[str, Any] | None, where: str) -> ClaudeOAuth | None:
    """The ``claudeAiOauth`` login of a credentials document, None if it has none. The error names
    ``where``, never pydantic's message: that quotes the input, tokens included."""
    entry = (doc or {}).get("claudeAiOauth")
    if entry is None:
        return None
    try:
        return ClaudeOAuth.model_validate(entry)
    except ValueError:
        raise CredentialsError(f"{where}: claudeAiOauth is malformed") from None


def with_oauth(doc: dict[str, Any], oauth: ClaudeOAuth) -> dict[str, Any]:
    """``doc`` with its login replaced by ``oauth``, keys ccproxy does not know kept."""
    previous = doc.get("claudeAiOauth")
    doc["claudeAiOauth"] = {**(previous if isinstance(previous, dict) else {}), **oauth.dump()}
    return doc


class CredentialStore(Protocol):
    name: str

    def load(self) -> ClaudeOAuth | None: ...

    def save(self, oauth: ClaudeOAuth) -> None: ...


class FileStore:
    """``.credentials.json``: read the whole document, replace ``claudeAiOauth``, keep the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file:{path}"

    def load(self) -> ClaudeOAuth | None:
        return oauth_in(read_json(self.path), str(self.path))

    def save(self, oauth: ClaudeOAuth) -> None:
        write_private_json(self.path, with_oauth(read_json(self.path) or {}, oauth))


class KeyringStore:
    """The OS keyring entry the CLI uses on desktops (macOS Keychain, Secret Service)."""

    name = "keyring"

    def __init__(self, username: str | None = None) -> None:
        self.username = username or getpass.getuser()

    def _get(self) -> dict[str, Any] | None:
        from keyring.errors import KeyringError

        try:
            return keyring_json(KEYRING_SERVICE, self.username, "the keyring entry")
        except (KeyringError, RuntimeError) as exc:
            log.debug("keyring unavailable: %s", type(exc).__name__)
            return None

    def load(self) -> ClaudeOAuth | None:
        return oauth_in(self._get(), "the keyring entry")

    def save(self, oauth: ClaudeOAuth) -> None:
        import keyring

        keyring.set_password(KEYRING_SERVICE, self.username, json.dumps(with_oauth(self._get() or {}, oauth)))


def keyring_json(service: str, username: str, where: str) -> dict[str, Any] | None:
    import keyring

    raw = keyring.get_password(service, username)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{where} is not valid JSON") from exc
    return doc if isinstance(doc, dict) else None


def cli_stores(settings: Settings) -> list[CredentialStore]:
    """Where the Claude CLI keeps its login: its credentials file, then (if used) the keyring."""
    stores: list[CredentialStore] = [FileStore(settings.claude_config_dir() / ".credentials.json")]
    if settings.auth.use_keyring:
        stores.append(KeyringStore())
    return stores


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None if there is no such file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{path} is not valid JSON (line {exc.lineno})") from exc
    if not isinstance(doc, dict):
        raise CredentialsError(f"{path} does not hold a JSON object")
    return doc


def write_private_json(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` atomically with a 0600 file: a reader sees the old or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


AccountKind = Literal["oauth", "claude_cli", "api_key"]
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


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
    import keyring
    from keyring.backends import chainer, fail

    try:
        backend = keyring.get_keyring()
    except Exception:
        return False
    empty_chain = isinstance(backend, chainer.ChainerBackend) and not backend.backends
    return not (isinstance(backend, fail.Keyring) or empty_chain or "null" in type(backend).__module__)


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

    def list(self) -> list[Account]:
        """Every account, in fill-first order (priority, then age)."""
        found: list[Account] = []
        for path in sorted(self.root.glob("*.json")):
            try:
                doc = read_json(path)
            except AccountError as exc:
                log.warning("skipping account file: %s", exc)
                continue
            if doc and isinstance(doc.get("account"), dict):
                found.append(Account.model_validate(doc["account"]))
        return sorted(found, key=lambda a: (a.priority, a.created_at, a.name))

    def get(self, name: str) -> Account | None:
        doc = read_json(self.path(name))
        return Account.model_validate(doc["account"]) if doc and "account" in doc else None

    def version(self) -> tuple[tuple[str, int], ...]:
        """Changes whenever an account is added, removed or rewritten (cheap: stat only)."""
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in self.root.glob("*.json")))

    def secret(self, name: str) -> dict[str, Any] | None:
        doc = read_json(self.path(name))
        if doc is None:
            return None
        secret = doc.get("secret")
        if self.use_keyring:
            secret = keyring_json(ACCOUNTS_KEYRING_SERVICE, f"account:{name}", f"the keyring entry of account {name}")
        if not isinstance(secret, dict):
            return None
        for value in secret.values():
            if isinstance(value, str):
                register_secret(value)
        return secret

    def save(self, account: Account, secret: dict[str, Any] | None = None) -> Account:
        """Write ``account``; one added again keeps its age and priority (its place in the fill-first order)."""
        path = self.path(account.name)
        doc: dict[str, Any] = read_json(path) or {}
        kept = {k: v for k, v in (doc.get("account") or {}).items() if k in ("created_at", "priority")}
        account = account.model_copy(update=kept)
        doc["account"] = account.model_dump(mode="json")
        if secret is not None and self.use_keyring:
            import keyring

            keyring.set_password(ACCOUNTS_KEYRING_SERVICE, f"account:{account.name}", json.dumps(secret))
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
                keyring.delete_password(ACCOUNTS_KEYRING_SERVICE, f"account:{check_name(name)}")
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
