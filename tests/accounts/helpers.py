"""Starting ``ccproxy serve`` with named accounts against the fake upstream, and reading what
happened (which account the fake saw, what ``auth status`` says)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic

from tests.support.fake import FakeUpstream
from tests.support.process import Proc
from tests.support.serve import isolated_env, launch_serve, run_ccproxy, write_credentials

MODEL = "claude-haiku-4-5-20251001"
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Team:
    """A data dir with named accounts, and the env every ccproxy process of the test gets."""

    run_dir: Path
    fake: FakeUpstream
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def ccproxy(self, *args: str, check: bool = True) -> Any:
        done = run_ccproxy(list(args), self.env, self.run_dir)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def add_oauth(self, name: str, **options: Any) -> str:
        """A subscription account (a copy of fresh fake credentials); returns its access token."""
        oauth = self.fake.credentials(**options)
        source = self.run_dir / f"import-{name}"
        write_credentials(source, oauth)
        self.ccproxy("auth", "import", "--account", name, "--from", str(source / ".credentials.json"))
        self.tokens[name] = oauth["accessToken"]
        return str(oauth["accessToken"])

    def add_api_key(self, name: str) -> str:
        key = self.fake.api_key()
        self.ccproxy("auth", "add-key", "--account", name, "--key", key)
        self.tokens[name] = key
        return key

    def fp(self, name: str) -> str:
        """The fingerprint prefix the fake's ``[[fake:acct=FP/...]]`` markers match."""
        return self.fake.fingerprint(self.tokens[name]).removeprefix("fp:")[:12]

    def status(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.ccproxy("auth", "status", "--json").stdout)
        return {row["name"]: row for row in rows}

    def serve(self, **env: str) -> Proc:
        return launch_serve(self.run_dir, fake_url=self.fake.url, claude_config_dir=None, env=self.env | env)

    def seen(self, nonce: str) -> list[tuple[str, int]]:
        """(account, status) of every upstream request whose body holds ``nonce``, in order."""
        by_fp = {self.fake.fingerprint(token): name for name, token in self.tokens.items()}
        out = []
        for record in self.fake.requests(path="/v1/messages"):
            if nonce in json.dumps(record.get("body")):
                out.append((by_fp.get((record.get("auth") or {}).get("fingerprint"), "?"), record["status"]))
        return out


def make_team(tmp_path: Path, fake: FakeUpstream, prefix: str, **env: str) -> Team:
    run_dir = tmp_path / "team"
    run_dir.mkdir(parents=True, exist_ok=True)
    base = isolated_env(run_dir, fake_url=fake.url, claude_config_dir=tmp_path / "no-claude-login")
    base |= {"AUTH__SECRET_BACKEND": "file", "REDIS__KEY_PREFIX": prefix, **env}
    return Team(run_dir, fake, base)


def client(proc: Proc, key: str = "unused", **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=proc.url + "/api", api_key=key, **kwargs)


def nonce() -> str:
    return "n" + secrets.token_hex(6)
