"""Settings sources and their order: CLI flags, environment, .env, TOML, defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx

from tests.support.ports import free_port
from tests.support.process import start_process
from tests.support.serve import CCPROXY


def serve_in(cwd: Path, env: dict[str, str], args: list[str], host: str, port: int) -> None:
    """Start ``ccproxy serve`` and check it answers on host:port (and stop it)."""
    url = f"http://{host}:{port}"
    proc = start_process([str(CCPROXY), "serve", *args], url=url, health_url=url + "/health",
                         log_path=cwd / f"serve-{port}.log", env=env, cwd=cwd, port=port)
    try:
        assert httpx.get(url + "/health").json()["ready"] is True
    finally:
        proc.stop()


def test_order_flags_env_dotenv_toml(tmp_path: Path, ccproxy_env: Any) -> None:
    toml_port, dotenv_port, env_port, flag_port = (free_port() for _ in range(4))
    (tmp_path / "ccproxy.toml").write_text(f"[server]\nport = {toml_port}\n")
    (tmp_path / ".env").write_text(f"SERVER__PORT={dotenv_port}\n")
    env = ccproxy_env({"SERVER__PORT": str(env_port)})
    # Flags beat the environment (and --host works, on another loopback address).
    serve_in(tmp_path, env, ["--host", "127.0.0.2", "--port", str(flag_port)], "127.0.0.2", flag_port)
    # The environment beats .env.
    serve_in(tmp_path, env, [], "127.0.0.1", env_port)
    # .env beats the TOML file.
    env.pop("SERVER__PORT")
    serve_in(tmp_path, env, [], "127.0.0.1", dotenv_port)
    # The TOML file beats the default.
    (tmp_path / ".env").unlink()
    serve_in(tmp_path, env | {"SERVER__HOST": "127.0.0.3"}, [], "127.0.0.3", toml_port)
