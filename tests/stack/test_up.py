"""``ccproxy up``: the stack as local processes (Traefik and a local redis-server included), the
same public paths as ``ccproxy serve``, a service that dies is restarted, and Ctrl-C or SIGTERM
stops every process it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import Proc, start_process, wait_until
from tests.support.serve import CCPROXY, isolated_env, run_ccproxy

MODEL = "claude-sonnet-4-6"
TOKEN = "cc-test-client-token-for-the-up-stack"
#: Public paths and methods a client may try; `up` must answer each the way `serve` does.
PATHS = [
    ("GET", "/health"), ("GET", "/metrics"), ("GET", "/api/v1/models"), ("GET", "/api/models"),
    ("GET", "/api/status"), ("HEAD", "/api"), ("POST", "/api/v1/messages"),
    ("POST", "/api/v1/messages/count_tokens"), ("GET", "/nope"), ("POST", "/internal/pick"),
]

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="ccproxy up starts redis-server")


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_up(tmp: Path, fake: FakeUpstream, claude_config_dir: Path, *args: str,
             env: dict[str, str | None] | None = None) -> Proc:
    port = free_port()
    run_dir = tmp / "up"
    run_dir.mkdir(parents=True, exist_ok=True)
    full_env = isolated_env(run_dir, fake_url=fake.url, claude_config_dir=claude_config_dir,
                            overrides={"SECURITY__AUTH_TOKEN": TOKEN, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    proc = start_process([str(CCPROXY), "up", "--port", str(port), *args], url=url, health_url=None,
                         log_path=run_dir / "up.log", env=full_env, cwd=run_dir, port=port, timeout=60)
    wait_until(lambda: "serving on" in proc.log_text() or not proc.alive(), timeout=60,
               message="ccproxy up to report it is serving")
    assert proc.alive(), proc.log_text()
    return proc


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[Proc]:
    from tests.support.serve import write_credentials

    tmp = tmp_path_factory.mktemp("up")
    config_dir = tmp / "claude"
    write_credentials(config_dir, fake_upstream.credentials())
    proc = start_up(tmp, fake_upstream, config_dir)
    try:
        yield proc
    finally:
        proc.stop(timeout=20)


def answers(url: str) -> dict[tuple[str, str], int]:
    out = {}
    with httpx.Client(timeout=30) as http:
        for method, path in PATHS:
            body = b'{"model": "%s", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}' % MODEL.encode()
            resp = http.request(method, url + path, headers={"x-api-key": TOKEN, "content-type": "application/json"},
                                content=body if method == "POST" else None)
            out[(method, path)] = resp.status_code
    return out


def test_up_serves_the_public_api(up: Proc) -> None:
    client = anthropic.Anthropic(base_url=up.url + "/api", api_key=TOKEN, max_retries=0)
    answer = client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "up"}])
    assert answer.content[0].text == "Echo: up"  # type: ignore[union-attr]
    with client.messages.stream(model=MODEL, max_tokens=20,
                                messages=[{"role": "user", "content": "streamed"}]) as stream:
        assert stream.get_final_text() == "Echo: streamed"
    # Client auth is on (the token came from the environment, as compose passes it).
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=up.url + "/api", api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_same_public_paths_as_serve(up: Proc, start_serve) -> None:  # type: ignore[no-untyped-def]
    serve = start_serve(env={"SECURITY__AUTH_TOKEN": TOKEN})
    from_serve, from_up = answers(serve.url), answers(up.url)
    assert from_up == from_serve
    assert from_up[("GET", "/health")] == 200 and from_up[("POST", "/api/v1/messages")] == 200


def test_a_dead_service_is_restarted(up: Proc) -> None:
    forwarder = next(p for p in children(up.process.pid) if "run api-forwarder" in command_of(p))
    os.kill(forwarder, signal.SIGKILL)
    wait_until(lambda: "api-forwarder exited" in up.log_text(), timeout=10, message="up to notice")

    def replaced() -> bool:
        return any("run api-forwarder" in command_of(p) and p != forwarder for p in children(up.process.pid))

    wait_until(replaced, timeout=20, message="a new api-forwarder")
    client = anthropic.Anthropic(base_url=up.url + "/api", api_key=TOKEN, max_retries=0)

    def works() -> bool:
        try:
            return client.messages.create(model=MODEL, max_tokens=5, messages=[
                {"role": "user", "content": "again"}]).content[0].text == "Echo: again"  # type: ignore[union-attr]
        except anthropic.APIStatusError:
            return False

    wait_until(works, timeout=20, message="requests to work again")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_every_process(tmp_path: Path, fake_upstream: FakeUpstream, claude_config_dir: Path,
                                    sig: int) -> None:
    proc = start_up(tmp_path, fake_upstream, claude_config_dir)
    kids = children(proc.process.pid)
    names = {command_of(k).split(" run ")[-1].strip() if " run " in command_of(k) else command_of(k).split()[0]
             for k in kids}
    assert {"auth", "api-forwarder", "gateway"} <= names, names
    assert any("traefik" in n for n in names) and any("redis-server" in n for n in names), names
    os.kill(proc.process.pid, sig)  # what Ctrl-C (SIGINT) or `kill`/compose (SIGTERM) sends
    proc.process.wait(30)
    assert proc.process.returncode == 0, proc.log_text()
    wait_until(lambda: not any(alive(k) for k in kids), timeout=10, message="every child to exit")
    with pytest.raises(httpx.TransportError):
        httpx.get(proc.url + "/health", timeout=2)


def test_busy_port_is_one_clear_line(tmp_path: Path, fake_upstream: FakeUpstream, claude_config_dir: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = isolated_env(tmp_path, fake_url=fake_upstream.url, claude_config_dir=claude_config_dir)
        started = time.monotonic()
        result = run_ccproxy(["up", "--port", str(port)], env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 15


def test_non_loopback_without_client_auth_is_refused(tmp_path: Path, claude_config_dir: Path) -> None:
    env = isolated_env(tmp_path, claude_config_dir=claude_config_dir)
    result = run_ccproxy(["up", "--host", "0.0.0.0", "--port", str(free_port())], env=env, cwd=tmp_path)
    assert result.returncode == 2 and "SECURITY__AUTH_TOKEN" in result.stderr


def test_run_needs_the_internal_secret(tmp_path: Path) -> None:
    env = isolated_env(tmp_path, overrides={"SERVICES__AUTH_URL": "http://127.0.0.1:9"})
    for service in ("auth", "api-forwarder"):
        result = run_ccproxy(["run", service, "--port", str(free_port())], env=env, cwd=tmp_path)
        assert result.returncode == 2, result
        assert "SECURITY__INTERNAL_SECRET is not set" in result.stderr and "Traceback" not in result.stderr
    result = run_ccproxy(["run", "nope"], env=env, cwd=tmp_path)
    assert result.returncode == 2 and "unknown service" in result.stderr


def test_healthcheck_command(up: Proc, tmp_path: Path) -> None:
    """The Docker HEALTHCHECK of every image: exit 0 when /health answers, 1 when not."""
    env = isolated_env(tmp_path)
    ok = subprocess.run([str(CCPROXY), "healthcheck", "--url", up.url + "/health"], env=env, cwd=tmp_path,
                        capture_output=True, timeout=30, check=False)
    assert ok.returncode == 0
    down = run_ccproxy(["healthcheck"], env={**env, "SERVER__PORT": str(free_port())}, cwd=tmp_path)
    assert down.returncode == 1
