"""One Redis client per process: the composition root (``serve``'s ``build_local_app``, each
service's factory, the sdk-worker's ``main``) opens it and hands it down.

A client is counted by its connection pool (redis-py and fakeredis each make one per client;
arq's client shares the worker's pool, so it is not a second client). Building an app opens no
connection, so a Redis URL nobody listens on is enough.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio.connection import ConnectionPool

from ccproxy_core.settings import RedisSettings, SecuritySettings, ServerSettings, ServicesSettings, Settings

NOBODY = "redis://127.0.0.1:9/0"  # the discard port: never connected to, only parsed


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ConnectionPool]]:
    made: list[ConnectionPool] = []
    original = ConnectionPool.__init__

    def counting(self: ConnectionPool, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ConnectionPool, "__init__", counting)
    yield made


def stack_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        redis=RedisSettings(url=NOBODY),
        security=SecuritySettings(internal_secret=SecretStr("s" * 32)),
        services=ServicesSettings(forwarder_url="http://127.0.0.1:9", auth_url="http://127.0.0.1:9"),
        server=ServerSettings(port=0),
    )


def test_serve_builds_one_client_for_every_mounted_app(tmp_path: Path, pools: list[ConnectionPool]) -> None:
    from ccproxy_app.local import build_local_app

    build_local_app(Settings(data_dir=tmp_path))
    assert len(pools) == 1


def test_serve_with_a_redis_url_builds_one_client(tmp_path: Path, pools: list[ConnectionPool]) -> None:
    from ccproxy_app.local import build_local_app

    build_local_app(Settings(data_dir=tmp_path, redis=RedisSettings(url=NOBODY)))
    assert len(pools) == 1


@pytest.mark.parametrize(("module", "clients"), [
    ("ccproxy_gateway.service", 1),
    ("ccproxy_auth.service", 1),
    ("ccproxy_permissions.service", 1),
    ("ccproxy_analytics.service", 1),
    ("ccproxy_forwarder.service", 0),  # no Redis at all: tokens come from auth
])
def test_each_service_factory_builds_at_most_one_client(
    tmp_path: Path, pools: list[ConnectionPool], module: str, clients: int
) -> None:
    importlib.import_module(module).create_service_app(stack_settings(tmp_path))
    assert len(pools) == clients


def test_the_sdk_worker_process_builds_one_client(
    tmp_path: Path, pools: list[ConnectionPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from ccproxy_sdk_worker import worker

    async def stopped_at_once(self: uvicorn.Server, sockets: Any = None) -> None:
        return None  # as if SIGTERM came the moment it started: main's clean-up runs

    monkeypatch.setattr(uvicorn.Server, "serve", stopped_at_once)
    monkeypatch.setattr(worker, "scrub_environment", lambda: [])
    worker.main(stack_settings(tmp_path))
    assert len(pools) == 1
