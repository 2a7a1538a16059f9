"""Apps built with their lifespan: parts start in order, stop in reverse, and a part that fails
to start leaves the parts before it stopped (``ccproxy_core.lifespan``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ccproxy_core.lifespan import closing, lifespan, running
from ccproxy_core.settings import Settings


class Boom(Exception):
    pass


class Journal:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def part(self, name: str, fails: bool = False) -> Any:
        async def start() -> None:
            if fails:
                raise Boom(name)
            self.lines.append(f"start {name}")

        async def stop() -> None:
            self.lines.append(f"stop {name}")

        return running(start, stop)


async def test_parts_stop_in_reverse_after_a_clean_run() -> None:
    journal = Journal()
    closed: list[str] = []

    async def close() -> None:
        closed.append("client")

    app_lifespan = lifespan(closing(close), journal.part("a"), journal.part("b"))
    async with app_lifespan(None):
        assert journal.lines == ["start a", "start b"]
        assert closed == []
    assert journal.lines == ["start a", "start b", "stop b", "stop a"]
    assert closed == ["client"]


async def test_a_part_failing_at_start_up_leaves_the_earlier_parts_closed() -> None:
    journal = Journal()
    reached = False
    app_lifespan = lifespan(journal.part("first"), journal.part("second"), journal.part("third", fails=True),
                            journal.part("fourth"))
    with pytest.raises(Boom):
        async with app_lifespan(None):
            reached = True
    assert not reached
    assert journal.lines == ["start first", "start second", "stop second", "stop first"]


async def test_the_same_lifespan_runs_again() -> None:
    """A part is a factory: a second start (a second TestClient on the app) gets fresh ones."""
    journal = Journal()
    app_lifespan = lifespan(journal.part("a"))
    for _ in range(2):
        async with app_lifespan(None):
            pass
    assert journal.lines == ["start a", "stop a", "start a", "stop a"]


async def test_serve_undoes_its_start_up_when_the_sdk_worker_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last part of ``serve`` fails: permissions, analytics, the forwarder and the one Redis
    client, started or opened before it, are all closed, in reverse order, and the error stands."""
    import ccproxy_app.local as local
    from ccproxy_analytics.service import Analytics
    from ccproxy_core.redis import connect
    from ccproxy_forwarder.forwarder import ApiForwarder
    from ccproxy_permissions.broker import PermissionBroker
    from ccproxy_sdk_worker.worker import Supervised

    journal: list[str] = []

    def record(what: str) -> Any:
        async def method(self: object) -> None:
            journal.append(what)
        return method

    monkeypatch.setattr(Analytics, "start", record("start analytics"))
    monkeypatch.setattr(Analytics, "stop", record("stop analytics"))
    monkeypatch.setattr(PermissionBroker, "start", record("start permissions"))
    monkeypatch.setattr(PermissionBroker, "stop", record("stop permissions"))
    monkeypatch.setattr(ApiForwarder, "aclose", record("close forwarder"))

    def one_client(settings: Any) -> Any:
        client = connect(settings)

        async def aclose() -> None:
            journal.append("close redis")
        client.aclose = aclose  # type: ignore[method-assign]
        return client

    monkeypatch.setattr(local, "connect", one_client)

    @contextlib.asynccontextmanager
    async def broken_worker(*args: Any) -> AsyncIterator[None]:
        raise Boom("the sdk-worker cannot start")
        yield

    monkeypatch.setattr(Supervised, "running", broken_worker)
    app = local.build_local_app(Settings(data_dir=tmp_path))
    with pytest.raises(Boom):
        async with app.router.lifespan_context(app):
            pass
    assert journal == ["start analytics", "start permissions",
                       "stop permissions", "stop analytics", "close forwarder", "close redis"]
