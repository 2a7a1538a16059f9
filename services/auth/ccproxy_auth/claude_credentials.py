"""The Claude CLI's own credentials, read and written where the CLI keeps them.

File: ``$CLAUDE_CONFIG_DIR/.credentials.json`` (default ``~/.claude``), key ``claudeAiOauth``.
Keyring: service ``Claude Code-credentials``. A refresh rotates the refresh token, so the new
pair is written back to the same place (atomically, mode 0600, every other key kept) or the CLI
would be left holding a dead token.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ccproxy_core.settings import Settings

log = logging.getLogger(__name__)

KEYRING_SERVICE = "Claude Code-credentials"


class CredentialsError(Exception):
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
    """Somewhere the CLI's credentials live."""

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
        try:
            from keyring.errors import KeyringError
        except ImportError:
            return None
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
    """A keyring entry that holds a JSON object, None if there is none."""
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
