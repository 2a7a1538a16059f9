"""ANALYTICS__RETENTION_DAYS: the access log's TTL, set at each start of the analytics service
(so a changed value applies to an existing table), on the ClickHouse engine (chDB over HTTP)."""

from __future__ import annotations

import uuid

from ccproxy_analytics.store import ClickHouse
from tests.analytics.conftest import ChdbServer


async def create_query(store: ClickHouse) -> str:
    rows = await store.query("SELECT create_table_query AS q FROM system.tables "
                             "WHERE database = {db:String} AND name = 'access_log'", {"db": store.database})
    return str(rows[0]["q"])


async def test_retention_days_become_a_ttl_and_follow_the_setting(chdb_server: ChdbServer) -> None:
    database = f"t_{uuid.uuid4().hex[:8]}"
    first = ClickHouse(chdb_server.url, database=database)
    await first.ready()
    assert " TTL " not in await create_query(first)  # 0: rows are kept
    await first.aclose()

    kept = ClickHouse(chdb_server.url, database=database, retention_days=30)
    await kept.ready()
    assert "TTL toDateTime(started_at) + toIntervalDay(30)" in await create_query(kept)
    await kept.aclose()

    changed = ClickHouse(chdb_server.url, database=database, retention_days=7)
    await changed.ready()
    assert "toIntervalDay(7)" in await create_query(changed)
    await changed.aclose()

    off = ClickHouse(chdb_server.url, database=database, retention_days=0)
    await off.ready()
    assert " TTL " not in await create_query(off)
    await off.aclose()
