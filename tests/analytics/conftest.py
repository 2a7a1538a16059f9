"""Real engines for the analytics tests, as processes a test can stop and start again.

- ``chdb_server``: ClickHouse's HTTP interface served by chDB (``tests/chdb_http.py``) on a
  fixed port and data directory, so a restart is the same server with the same data.
- Redis outages use ``aof_redis`` (tests/conftest.py); tests
  that only need Redis use the shared one at 127.0.0.1:6379 with a key prefix of their own.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.process import Proc, start_process
from tests.support.serve import REPO_ROOT


class Restartable:
    """A server process on a fixed port that can be stopped and started again."""

    def __init__(self, name: str, cmd: list[str], port: int, log_dir: Path, health: str | None) -> None:
        self.name, self.cmd, self.port, self.log_dir, self.health = name, cmd, port, log_dir, health
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = start_process(
            self.cmd, url=f"http://127.0.0.1:{self.port}", health_url=self.health,
            log_path=self.log_dir / f"{self.name}-{self.starts}.log", cwd=REPO_ROOT, port=self.port,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # an outage, not a clean shutdown
            self.proc = None


class ChdbServer(Restartable):
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, database: str | None = None) -> Any:
        import clickhouse_connect

        return clickhouse_connect.get_client(host="127.0.0.1", port=self.port, database=database)


@pytest.fixture
def chdb_server(tmp_path: Path) -> Iterator[ChdbServer]:
    port = free_port()
    server = ChdbServer(
        "chdb-http",
        [sys.executable, "-m", "tests.chdb_http", "--port", str(port), "--path", str(tmp_path / "chdb")],
        port, tmp_path, health=f"http://127.0.0.1:{port}/ping",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own (on the shared Redis at 127.0.0.1:6379)."""
    return f"test-{uuid.uuid4().hex[:12]}:"
