"""Permissions-service processes on real Redis, each test with a key prefix of its own.

``permissions(**env)`` starts one replica (``ccproxy run permissions``) sharing the test's prefix,
so two calls make two replicas of one deployment; a replica can be stopped and started again on
the same port (a restart).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.ports import free_port
from tests.support.process import Proc, start_process
from tests.support.serve import CCPROXY, isolated_env

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_TOKEN = "cc-admin-" + "a" * 32
INTERNAL_SECRET = "internal-" + "s" * 32

StartPermissions = Callable[..., Proc]


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"test-perm-{secrets.token_hex(6)}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=value + "*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def permissions(tmp_path: Path, prefix: str) -> Iterator[StartPermissions]:
    started: list[Proc] = []

    def start(port: int | None = None, **env: str) -> Proc:
        port = port or free_port()
        run_dir = tmp_path / f"permissions-{port}-{len(started)}"
        run_dir.mkdir(parents=True, exist_ok=True)
        full_env = isolated_env(
            run_dir,
            overrides={
                "REDIS__URL": REDIS_URL,
                "REDIS__KEY_PREFIX": prefix,
                "SECURITY__AUTH_TOKEN": ADMIN_TOKEN,
                "SECURITY__INTERNAL_SECRET": INTERNAL_SECRET,
                "SERVER__PORT": str(port),
                **env,
            },
        )
        url = f"http://127.0.0.1:{port}"
        proc = start_process(
            [str(CCPROXY), "run", "permissions"],
            url=url,
            health_url=f"{url}/health",
            log_path=run_dir / "permissions.log",
            env=full_env,
            cwd=run_dir,
            port=port,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
