"""Fixtures every integration and end-to-end test may use.

- ``fake_upstream``: the fake Anthropic API, one process per test session.
- ``claude_config_dir``: a Claude CLI config dir with a ``.credentials.json`` the fake accepts.
- ``start_serve``: start ``ccproxy serve`` against the fake; returns a :class:`Proc`.
- ``ccproxy_env``: the isolated environment those processes get (for commands run to completion).
- ``page``: a page in a fresh headless Chromium (``tests/support/browser.py``), for web pages.
- ``own_redis`` / ``aof_redis``: a private ``redis-server`` a test may stop and start (the second
  with an fsynced append-only file, so a restart brings the data back).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Browser, Page, chromium_path
from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import Proc, start_process
from tests.support.redis_server import OwnRedis
from tests.support.serve import (
    REPO_ROOT,
    UNKNOWN_KEY,
    UNKNOWN_VALUE,
    isolated_env,
    launch_serve,
    write_credentials,
)


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    tmp = tmp_path_factory.mktemp("fake_upstream")
    port = free_port()
    proc = start_process(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--state-file", str(tmp / "state.json")],
        url=f"http://127.0.0.1:{port}",
        health_url=f"http://127.0.0.1:{port}/_fake/health",
        log_path=tmp / "fake_upstream.log",
        cwd=REPO_ROOT,
        port=port,
    )
    try:
        yield FakeUpstream(proc)
    finally:
        proc.stop()


@pytest.fixture
def claude_config_dir(tmp_path: Path, fake_upstream: FakeUpstream) -> Path:
    """``<tmp>/claude`` holding ``.credentials.json`` (mode 0600) with fresh credentials from the
    fake and one unknown top-level key (:data:`UNKNOWN_KEY`)."""
    config_dir = tmp_path / "claude"
    write_credentials(config_dir, fake_upstream.credentials(), extra={UNKNOWN_KEY: UNKNOWN_VALUE})
    return config_dir


@pytest.fixture
def ccproxy_env(tmp_path: Path, fake_upstream: FakeUpstream, claude_config_dir: Path
                ) -> Callable[..., dict[str, str]]:
    """``ccproxy_env(**overrides) -> env``: the isolated environment ``start_serve`` uses."""

    def build(overrides: dict[str, str | None] | None = None, config_dir: Path | None = None) -> dict[str, str]:
        return isolated_env(
            tmp_path, fake_url=fake_upstream.url, claude_config_dir=config_dir or claude_config_dir,
            overrides=overrides,
        )

    return build


@pytest.fixture
def start_serve(tmp_path: Path, fake_upstream: FakeUpstream, claude_config_dir: Path
                ) -> Iterator[Callable[..., Proc]]:
    """``start_serve(env=None, args=None, *, config_dir=None, wait=True) -> Proc``.

    Runs ``.venv/bin/ccproxy serve --port <free>`` from a temp working directory with HOME and
    XDG dirs in tmp, CLAUDE_CONFIG_DIR at ``claude_config_dir`` (or ``config_dir``), the upstream
    and OAuth URLs at the fake and the keyring off; ``env`` overrides (None removes a variable).
    Waits until ``/health`` answers; every process is killed at teardown.
    """
    started: list[Proc] = []
    counter = iter(range(1_000_000))

    def start(env: dict[str, str | None] | None = None, args: list[str] | None = None, *,
              config_dir: Path | None = None, wait: bool = True, timeout: float = 20.0) -> Proc:
        proc = launch_serve(
            tmp_path / f"serve-{next(counter)}", fake_url=fake_upstream.url,
            claude_config_dir=config_dir or claude_config_dir, env=env, args=args, wait=wait, timeout=timeout,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "claude_cli: needs the Claude Code CLI from node_modules")


def _private_redis(workdir: Path, *, append_only: bool) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    server = OwnRedis(workdir, append_only=append_only)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    yield from _private_redis(tmp_path / "redis", append_only=False)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    yield from _private_redis(tmp_path / "redis-aof", append_only=True)


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    executable = chromium_path()
    if executable is None:
        pytest.fail("chromium is not installed: run scripts/setup-test-deps.sh (make setup-test)")
    browser = Browser(executable, tmp_path / "profile")
    try:
        opened = await browser.new_page()
        yield opened
        await opened.close()
    finally:
        await browser.close()
