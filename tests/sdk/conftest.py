"""SDK mode for real: the Claude Code CLI (pinned npm package) run by real sdk-workers through arq
on the real Redis, against the fake upstream.

- ``sdk_stack`` (module): the stack (Traefik, gateway, api-forwarder, auth, one sdk-worker) with
  its own Redis key prefix, the CLI pointed at the fake, a workspace with ``notes.txt``.
- ``start_worker``: one more ``ccproxy run sdk-worker`` on that stack's queue.
- ``cli_processes(prefix)``: the Claude Code processes started for runs under a key prefix.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import Proc, start_process
from tests.support.serve import CCPROXY, REPO_ROOT, isolated_env, write_credentials
from tests.support.stack import StackProc, launch_stack

CLI = REPO_ROOT / "node_modules" / ".bin" / "claude"


@dataclass
class SdkSetup:
    """What an SDK-mode test talks to: ``url`` (the public address), the workspace, the env."""

    url: str
    workspace: Path
    notes: Path
    notes_text: str
    env: dict[str, str]
    key_prefix: str
    stack: StackProc | None = None


def workspace(root: Path) -> tuple[Path, Path, str]:
    ws = root / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    text = f"the secret word is {secrets.token_hex(4)}"
    notes = ws / "notes.txt"
    notes.write_text(text + "\n")
    return ws, notes, text


def sdk_env(ws: Path, **extra: str) -> dict[str, str]:
    return {
        "CLAUDE__CLI_PATH": str(CLI),
        "CLAUDE__WORKSPACE_ROOT": str(ws),
        "CLAUDE__POLL_INTERVAL": "0.05",
        **extra,
    }


def config_dir(root: Path, fake: FakeUpstream) -> Path:
    directory = root / "claude"
    write_credentials(directory, fake.credentials())
    return directory


def launch_sdk_stack(root: Path, fake: FakeUpstream) -> tuple[StackProc, tuple[Path, Path, str]]:
    """The stack (one sdk-worker, one run at a time) with the workspace ``(ws, notes, text)``."""
    if not CLI.exists():
        pytest.fail(f"the Claude Code CLI is not installed at {CLI}: run `npm ci` (the repo's package.json)")
    ws, notes, text = workspace(root)
    env = sdk_env(ws, CLAUDE__MAX_CONCURRENT_RUNS="1", CLAUDE__QUEUE_TIMEOUT="30")
    stack = launch_stack(root / "run", fake_url=fake.url, claude_config_dir=config_dir(root, fake), env=env, timeout=40)
    return stack, (ws, notes, text)


@pytest.fixture(scope="module")
def sdk_stack(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[SdkSetup]:
    stack, (ws, notes, text) = launch_sdk_stack(tmp_path_factory.mktemp("sdk-stack"), fake_upstream)
    try:
        full_env = {**stack.specs["sdk-worker"][1], **stack.specs["sdk-worker"][0].env}
        yield SdkSetup(stack.url, ws, notes, text, full_env, stack.key_prefix, stack)
    finally:
        stack.stop()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``start_worker(setup, **env) -> Proc``: another sdk-worker on ``setup``'s queue."""
    started: list[Proc] = []

    def start(setup: SdkSetup, **env: str) -> Proc:
        port = free_port()
        full = {**setup.env, "SERVER__PORT": str(port), **env}
        proc = start_process(
            [str(CCPROXY), "run", "sdk-worker"], url=f"http://127.0.0.1:{port}",
            health_url=f"http://127.0.0.1:{port}/health", log_path=tmp_path / f"worker-{port}.log",
            env=full, cwd=tmp_path, port=port, timeout=30,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def launch_sdk_serve(root: Path, fake: FakeUpstream, args: list[str] | None = None, **env: str
                     ) -> tuple[SdkSetup, Proc]:
    """``ccproxy serve [args]`` (embedded Redis, the worker in process) with SDK settings ``env``."""
    from tests.support.serve import launch_serve

    ws, notes, text = workspace(root)
    prefix = f"sdk-serve-{secrets.token_hex(4)}:"
    full = sdk_env(ws, REDIS__KEY_PREFIX=prefix, **env)
    proc = launch_serve(root / "run", fake_url=fake.url, claude_config_dir=config_dir(root, fake), env=full,
                        args=args, timeout=40)
    return SdkSetup(proc.url, ws, notes, text, isolated_env(root / "run", overrides=full), prefix), proc


def cli_processes(key_prefix: str) -> list[int]:
    """Pids of Claude Code processes a worker with ``REDIS__KEY_PREFIX=key_prefix`` started: each
    run is marked ``CCPROXY_SDK_RUN``, and the worker (or ``serve``) that started it, an ancestor,
    was launched with that prefix. The standalone worker removes its settings from the
    environment it hands the CLI, so the prefix is looked for along the ancestry, not on the CLI."""
    prefix_marker = f"REDIS__KEY_PREFIX={key_prefix}".encode()
    parent: dict[int, int] = {}
    has_prefix: set[int] = set()
    runs: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
        parent[pid] = ppid
        if prefix_marker in environ:
            has_prefix.add(pid)
        if "State:\tZ" not in status and any(v.startswith(b"CCPROXY_SDK_RUN=") for v in environ):
            runs.append(pid)

    def started_here(pid: int) -> bool:
        seen: set[int] = set()
        while pid and pid not in seen:
            if pid in has_prefix:
                return True
            seen.add(pid)
            pid = parent.get(pid, 0)
        return False

    return [pid for pid in runs if started_here(pid)]


__all__ = ["SdkSetup", "cli_processes", "launch_sdk_serve"]
