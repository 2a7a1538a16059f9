"""Running ``ccproxy`` against the fake upstream, isolated from the developer's machine.

Every run gets its own HOME, XDG dirs and working directory in a temp dir (so no real
``~/.claude``, keyring, ``.env`` or ``ccproxy.toml`` leaks in), and points the upstream and the
OAuth endpoints at the fake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.process import Proc, start_process

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The ``ccproxy`` entry point of the environment running the tests (normally ``.venv/bin``).
CCPROXY = next(
    (p for p in (Path(sys.executable).parent / "ccproxy", REPO_ROOT / ".venv" / "bin" / "ccproxy") if p.exists()),
    REPO_ROOT / ".venv" / "bin" / "ccproxy",
)
#: A top-level key the Claude CLI might keep in .credentials.json; a refresh must keep it.
UNKNOWN_KEY = "mcpOAuth"
UNKNOWN_VALUE = {"some-server": {"accessToken": "kept-as-is", "expiresAt": 1}}
#: Variables taken from the test runner's environment; everything else starts clean.
INHERITED = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "TZ")


def isolated_env(
    tmp: Path,
    *,
    fake_url: str | None = None,
    claude_config_dir: Path | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """The environment of a ccproxy process. ``overrides`` values of None remove a variable."""
    home = tmp / "home"
    for sub in ("", ".config", ".local/share", ".cache", ".local/state"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    env |= {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "AUTH__USE_KEYRING": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if fake_url is not None:
        env |= {
            "ANTHROPIC__BASE_URL": fake_url,
            "OAUTH__TOKEN_URL": fake_url + "/v1/oauth/token",
            "OAUTH__AUTHORIZE_URL": fake_url + "/oauth/authorize",
        }
    if claude_config_dir is not None:
        env["CLAUDE_CONFIG_DIR"] = str(claude_config_dir)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def write_credentials(config_dir: Path, oauth: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``.credentials.json`` the way the Claude CLI does (mode 0600), with ``extra``
    top-level keys (the CLI keeps other things there; a refresh must not lose them)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / ".credentials.json"
    doc = {**(extra or {}), "claudeAiOauth": dict(oauth)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.chmod(path, 0o600)
    return path


def run_ccproxy(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 30.0,
                ) -> subprocess.CompletedProcess[str]:
    """Run a ccproxy command to completion (for commands that print and exit, or must fail)."""
    return subprocess.run(
        [str(CCPROXY), *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False,
    )


def launch_serve(
    run_dir: Path,
    *,
    fake_url: str,
    claude_config_dir: Path | None,
    env: Mapping[str, str | None] | None = None,
    args: Sequence[str] | None = None,
    wait: bool = True,
    timeout: float = 20.0,
) -> Proc:
    """``ccproxy serve --port <free>`` in ``run_dir`` (its cwd, HOME and log live there)."""
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    full_env = isolated_env(run_dir, fake_url=fake_url, claude_config_dir=claude_config_dir, overrides=env)
    url = f"http://127.0.0.1:{port}"
    return start_process(
        [str(CCPROXY), "serve", "--port", str(port), *(args or [])],
        url=url,
        health_url=f"{url}/health" if wait else None,
        log_path=run_dir / "ccproxy.log",
        env=full_env,
        cwd=run_dir,
        port=port,
        timeout=timeout,
    )
