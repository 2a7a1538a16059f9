"""The paths a request can take to the fake upstream, each started as real processes.

- ``direct``: the client talks to the fake upstream itself (the limit), sending what ccproxy
  would add (bearer, betas, identity), so the upstream does the same work on every path.
- ``serve``: ``ccproxy serve``, one process.
- ``stack``: ``ccproxy run gateway``, ``api-forwarder`` and ``auth`` as separate processes.
- ``litellm``, ``ccproxy-api``: peers from PyPI, each in its own virtualenv (bench/.peers).

A target that cannot run here raises :class:`Skip` with the reason, and the table says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import peers
from bench.procs import Service, Skip, free_port

MODEL = "claude-sonnet-4-5"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
OAUTH_BETAS = "oauth-2025-04-20,claude-code-20250219"
ACCESS_TOKEN = "sk-ant-oat01-bench-" + "x" * 40


@dataclass
class Target:
    name: str
    host: str
    port: int
    path: str
    headers: dict[str, str]
    #: Does the client itself put the Claude Code identity in the body (direct path only)?
    identity_in_body: bool = False
    #: Process trees whose memory is reported, by role.
    processes: dict[str, int] = field(default_factory=dict)
    #: Whether the upstream must have seen bearer + betas + identity on every request.
    injects_oauth: bool = False
    version: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


def request_body(stream: bool, events: int = 0, delay_ms: int = 0, identity: bool = False) -> bytes:
    """A typical small Messages request (system prompt, a short multi-turn conversation)."""
    system: object = "You are a concise assistant that answers questions about software."
    if identity:
        system = [{"type": "text", "text": IDENTITY}, {"type": "text", "text": system}]
    body = {
        "model": MODEL,
        "max_tokens": 1024,
        "system": system,
        "messages": [
            {"role": "user", "content": "What does a reverse proxy do, in one sentence?"},
            {"role": "assistant", "content": "It accepts client requests and forwards them to servers."},
            {"role": "user", "content": f"And why measure its overhead? bench:events={events}:delay={delay_ms}"},
        ],
        "metadata": {"user_id": "bench-user"},
        "stream": stream,
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Context:
    upstream: str  # http://127.0.0.1:PORT of the fake upstream
    workdir: Path
    log_dir: Path
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Service:
        service = Service(name, argv, env, cwd or self.workdir, self.log_dir)
        self.services.append(service)
        return service


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ccproxy setting of the caller's (nested ``A__B`` keys)."""
    env = {k: v for k, v in os.environ.items() if "__" not in k and not k.startswith(("CLAUDE_", "ANTHROPIC_"))}
    env.update(extra)
    return env


def write_credentials(directory: Path) -> Path:
    """A valid-looking Claude CLI login that expires in a month (no refresh during the run)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".credentials.json"
    oauth = {
        "accessToken": ACCESS_TOKEN,
        "refreshToken": "sk-ant-ort01-bench-" + "y" * 40,
        "expiresAt": int((time.time() + 30 * 86400) * 1000),
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
    }
    path.write_text(json.dumps({"claudeAiOauth": oauth}))
    path.chmod(0o600)
    return path


CLIENT_HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "sk-bench"}


@contextlib.contextmanager
def direct(ctx: Context) -> Iterator[Target]:
    host, _, port = ctx.upstream.removeprefix("http://").partition(":")
    headers = {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "authorization": f"Bearer {ACCESS_TOKEN}",
        "anthropic-beta": OAUTH_BETAS,
    }
    yield Target("direct", host, int(port), "/v1/messages", headers, identity_in_body=True, injects_oauth=True)


def ccproxy_env(ctx: Context, home: Path, **extra: str) -> dict[str, str]:
    write_credentials(home / "claude")
    return clean_env(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        CLAUDE_CONFIG_DIR=str(home / "claude"),
        AUTH__USE_KEYRING="false",
        ANTHROPIC__BASE_URL=ctx.upstream,
        SERVER__HOST="127.0.0.1",
        **extra,
    )


def ccproxy_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from ccproxy_core.cli import main; main()", *args]


def ccproxy_version() -> str:
    try:
        from importlib.metadata import version

        return version("ccproxy-core")
    except Exception:
        return ""


@contextlib.contextmanager
def serve(ctx: Context) -> Iterator[Target]:
    home = ctx.workdir / "serve"
    port = free_port()
    env = ccproxy_env(ctx, home, SERVER__PORT=str(port))
    service = ctx.start("serve", ccproxy_argv("serve"), env, cwd=home)
    service.wait_http(f"http://127.0.0.1:{port}/health")
    yield Target(
        "ccproxy serve", "127.0.0.1", port, "/api/v1/messages", dict(CLIENT_HEADERS),
        processes={"serve": service.pid}, injects_oauth=True, version=ccproxy_version(),
    )


def has_run_command() -> bool:
    probe = subprocess.run(ccproxy_argv("run", "--help"), capture_output=True, text=True, timeout=60, check=False)
    return probe.returncode == 0 and "gateway" in probe.stdout


@contextlib.contextmanager
def stack(ctx: Context) -> Iterator[Target]:
    """The stack's request path as separate processes, as ``ccproxy up`` wires them (without
    Traefik in front, which is not ccproxy's code): gateway -> api-forwarder -> upstream, with
    auth (tokens) and a private redis-server (the stack's shared state, access-log stream)."""
    if not has_run_command():
        raise Skip("`ccproxy run gateway|api-forwarder` does not exist yet (the stack's processes)")
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise Skip("redis-server is not installed (the stack needs a Redis)")
    home = ctx.workdir / "stack"
    redis_port, auth_port, fwd_port, gw_port = free_port(), free_port(), free_port(), free_port()
    redis = ctx.start("stack-redis", [redis_server, "--bind", "127.0.0.1", "--port", str(redis_port),
                                      "--save", "", "--appendonly", "no"], clean_env())
    wait_tcp(redis, redis_port)
    common = {
        "SECURITY__INTERNAL_SECRET": secrets.token_urlsafe(24),
        "REDIS__URL": f"redis://127.0.0.1:{redis_port}/0",
        "SERVICES__AUTH_URL": f"http://127.0.0.1:{auth_port}",
        "SERVICES__FORWARDER_URL": f"http://127.0.0.1:{fwd_port}",
    }
    started: dict[str, Service] = {}
    for name, port in (("auth", auth_port), ("api-forwarder", fwd_port), ("gateway", gw_port)):
        env = ccproxy_env(ctx, home, SERVER__PORT=str(port), **common)
        started[name] = ctx.start(f"stack-{name}", ccproxy_argv("run", name), env, cwd=home)
        started[name].wait_http(f"http://127.0.0.1:{port}/health")
    yield Target(
        "ccproxy stack", "127.0.0.1", gw_port, "/api/v1/messages", dict(CLIENT_HEADERS),
        processes={"gateway": started["gateway"].pid, "api-forwarder": started["api-forwarder"].pid,
                   "auth": started["auth"].pid},
        injects_oauth=True, version=ccproxy_version(),
    )


def wait_tcp(service: Service, port: int, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited: {service.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{service.name} did not listen on {port}")


@contextlib.contextmanager
def litellm(ctx: Context) -> Iterator[Target]:
    venv = peers.ensure("litellm", ctx.log_dir)
    home = ctx.workdir / "litellm"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    master_key = "sk-" + secrets.token_hex(32)  # it refuses to start without one
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: anthropic/{MODEL}\n"
        f"      api_base: {ctx.upstream}\n"
        "      api_key: sk-ant-api03-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
    )
    port = free_port()
    env = clean_env(HOME=str(home), LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
                    LITELLM_TELEMETRY="False")
    argv = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    service = ctx.start("litellm", argv, env, cwd=home)
    service.wait_http(f"http://127.0.0.1:{port}/health/liveliness", deadline_s=180)
    headers = {**CLIENT_HEADERS, "authorization": f"Bearer {master_key}"}
    yield Target("LiteLLM proxy", "127.0.0.1", port, "/v1/messages", headers,
                 processes={"litellm": service.pid}, version=peers.PINS["litellm"])


@contextlib.contextmanager
def ccproxy_api(ctx: Context) -> Iterator[Target]:
    venv = peers.ensure("ccproxy-api", ctx.log_dir)
    home = ctx.workdir / "ccproxy-api"
    write_credentials(home / ".claude")
    config = home / "ccproxy.toml"
    config.write_text(
        'enabled_plugins = ["claude_api", "oauth_claude"]\n\n'
        f'[plugins.claude_api]\nbase_url = "{ctx.upstream}"\n'
    )
    port = free_port()
    env = clean_env(HOME=str(home))
    argv = [str(venv / "bin" / "ccproxy"), "--config", str(config), "serve", "--host", "127.0.0.1",
            "--port", str(port)]
    service = ctx.start("ccproxy-api", argv, env, cwd=home)
    service.wait_http(f"http://127.0.0.1:{port}/health", deadline_s=120)
    yield Target("ccproxy-api", "127.0.0.1", port, "/claude/v1/messages", dict(CLIENT_HEADERS),
                 processes={"ccproxy-api": service.pid}, version=peers.PINS["ccproxy-api"])


TARGETS: dict[str, Callable[[Context], contextlib.AbstractContextManager[Target]]] = {
    "direct": direct,
    "serve": serve,
    "stack": stack,
    "litellm": litellm,
    "ccproxy-api": ccproxy_api,
}
PEERS = ("litellm", "ccproxy-api")
