"""The stack for tests: auth, api-forwarder and gateway as separate OS processes behind the real
Traefik (the repo's routing file), with the real Redis, against the fake upstream.

The processes are exactly the ones ``ccproxy up`` plans (:func:`ccproxy_app.stack.plan_stack`:
same commands, same environment names), each started here with its own log and process group so
a test can kill one and start it again on the same port.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ccproxy_app.stack import (
    Service,
    ccproxy_service,
    find_routes_file,
    free_port,
    http_ok,
    plan_stack,
    traefik_service,
)
from tests.support.process import Proc, start_process, wait_until
from tests.support.serve import isolated_env

#: The shared Redis of the dev and CI machines; tests use a key prefix of their own.
SHARED_REDIS = "redis://127.0.0.1:6379/0"
ROUTES = find_routes_file()


def new_prefix() -> str:
    return f"ccproxy-test-{secrets.token_hex(6)}:"


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@dataclass
class StackProc:
    """A running stack. ``url`` is Traefik's public address; ``services`` by name."""

    url: str
    services: dict[str, Proc]
    specs: dict[str, tuple[Service, dict[str, str], Path]]
    internal_secret: str
    redis_url: str
    key_prefix: str
    _stopped: list[str] = field(default_factory=list)

    def service_url(self, name: str) -> str:
        return self.services[name].url

    def log_text(self) -> str:
        return "\n".join(f"--- {name}\n{proc.log_text()}" for name, proc in self.services.items())

    def kill(self, name: str) -> None:
        self.services[name].kill()

    def start(self, name: str, timeout: float = 20.0) -> Proc:
        """(Re)start one service on its port, as compose's restart policy or ``ccproxy up`` would."""
        service, env, log_dir = self.specs[name]
        previous = self.services.get(name)
        if previous is not None:
            previous.stop()
        proc = _start(service, env, log_dir, timeout)
        self.services[name] = proc
        return proc

    def start_all(self, timeout: float = 20.0) -> None:
        """Start every service at once (they retry each other), then wait until all answer."""
        pending = {}
        for name, (service, env, log_dir) in self.specs.items():
            proc, health_url = _spawn(service, env, log_dir)
            self.services[name] = proc
            pending[name] = (proc, health_url)
        for name, (proc, health_url) in pending.items():
            _wait_ready(name, proc, health_url, timeout)

    def stop(self) -> None:
        for proc in reversed(list(self.services.values())):
            proc.stop()
        delete_prefix(self.redis_url, self.key_prefix)


def _spawn(service: Service, env: dict[str, str], log_dir: Path) -> tuple[Proc, str]:
    """Start without waiting; returns the process and the URL that answers 2xx once it is ready."""
    full = {**env, **service.env}
    port = int(full.get("SERVER__PORT", "0"))
    if service.name == "traefik":
        # Through Traefik to the gateway: /ping answers before the routing file is loaded.
        scheme = "https" if full.get("TLS__CERT_FILE") else "http"
        address = next(a.split("=", 1)[1] for a in service.argv if a.startswith("--entryPoints.web.address="))
        url = f"{scheme}://{address}"
    else:
        url = f"http://127.0.0.1:{port}"
    proc = start_process(service.argv, url=url, health_url=None, log_path=log_dir / f"{service.name}.log",
                         env=full, cwd=log_dir, port=port)
    return proc, url + "/health"


def _wait_ready(name: str, proc: Proc, health_url: str, timeout: float) -> None:
    # Strictly 2xx: Traefik's own 404 (routing file not loaded yet) must not count as ready.
    wait_until(lambda: http_ok(health_url, verify=False) or proc.returncode is not None, timeout=timeout,
               message=f"{name} to answer {health_url} with 2xx")
    if proc.returncode is not None:
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{proc.log_text()[-4000:]}")


def _start(service: Service, env: dict[str, str], log_dir: Path, timeout: float) -> Proc:
    proc, health_url = _spawn(service, env, log_dir)
    _wait_ready(service.name, proc, health_url, timeout)
    return proc


def launch_stack(
    run_dir: Path,
    *,
    fake_url: str,
    claude_config_dir: Path | None,
    env: Mapping[str, str | None] | None = None,
    redis_url: str = SHARED_REDIS,
    timeout: float = 20.0,
) -> StackProc:
    """auth, api-forwarder, gateway and Traefik on free ports; Redis is ``redis_url``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = new_prefix()
    base = isolated_env(run_dir, fake_url=fake_url, claude_config_dir=claude_config_dir,
                        overrides={"REDIS__KEY_PREFIX": prefix, **(env or {})})
    secret = secrets.token_urlsafe(32)
    services, url = plan_stack(host="127.0.0.1", port=free_port(), internal_secret=secret, redis_url=redis_url,
                      redis_dir=run_dir / "redis", routes=ROUTES)
    stack = StackProc(url, {}, {}, secret, redis_url, prefix)
    try:
        for service in services:
            stack.specs[service.name] = (service, base, run_dir)
        stack.start_all(timeout)
        stack.url = stack.services["traefik"].url  # https:// when TLS__CERT_FILE is set
    except BaseException:
        stack.stop()
        raise
    return stack


def launch_replicas(
    run_dir: Path,
    *,
    fake_url: str,
    claude_config_dir: Path,
    names: Sequence[str],
    auth_for: Mapping[str, str],
    redis_url: str = SHARED_REDIS,
    env: Mapping[str, str | None] | None = None,
) -> StackProc:
    """Services by name (``auth-1``, ``api-forwarder-2`` ...) sharing one Redis and secret;
    ``auth_for[forwarder] = auth`` says which auth replica each forwarder asks."""
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = new_prefix()
    base = isolated_env(run_dir, fake_url=fake_url, claude_config_dir=claude_config_dir,
                        overrides={"REDIS__KEY_PREFIX": prefix, **(env or {})})
    secret = secrets.token_urlsafe(32)
    common = {"SECURITY__INTERNAL_SECRET": secret, "REDIS__URL": redis_url}
    ports = {name: free_port() for name in names}
    stack = StackProc("", {}, {}, secret, redis_url, prefix)
    try:
        for name in names:
            kind = name.rsplit("-", 1)[0]
            extra = dict(common)
            if kind == "api-forwarder":
                extra["SERVICES__AUTH_URL"] = f"http://127.0.0.1:{ports[auth_for[name]]}"
            service = ccproxy_service(kind, ports[name], extra)
            service.name = name
            stack.specs[name] = (service, base, run_dir)
        stack.start_all()
    except BaseException:
        stack.stop()
        raise
    return stack


__all__ = ["SHARED_REDIS", "StackProc", "delete_prefix", "launch_replicas", "launch_stack", "traefik_service"]
