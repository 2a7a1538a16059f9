"""ClickHouse through ``clickhouse-connect``: a server's HTTP interface (``CLICKHOUSE__URL``, e.g.
``http://default:secret@clickhouse:8123``) or, with a ``chdb://`` DSN, chDB in process for ``ccproxy serve``
(the same engine, SQL and schema). The client is synchronous, so calls run in a small thread pool; chDB
calls are kept to one thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseUnavailable(Exception):
    """ClickHouse could not be reached or refused the statement; the caller retries."""


class ClickHouse:
    def __init__(self, dsn: str, database: str = "ccproxy", retention_days: int = 0) -> None:
        if not IDENTIFIER.match(database):
            raise ValueError(f"invalid ClickHouse database name {database!r}")
        self.dsn = dsn
        self.database = database
        self.retention_days = max(0, int(retention_days))
        self.table = f"{database}.access_log"
        self.backend = "chdb" if dsn.startswith("chdb:") else "http"
        self._pool = ThreadPoolExecutor(max_workers=1 if self.backend == "chdb" else 4, thread_name_prefix="ch")
        self._client: Any = None
        self._migrated = False
        self._lock = asyncio.Lock()

    def _connect(self) -> Any:
        import clickhouse_connect

        if self.backend == "chdb":
            return clickhouse_connect.get_client(dsn=self.dsn)
        # Short timeouts: an outage is noticed in seconds and retried by the caller.
        return clickhouse_connect.get_client(dsn=self.dsn, connect_timeout=5, send_receive_timeout=60,
                                             query_retries=0, autogenerate_session_id=False)

    def _migrate(self, client: Any) -> None:
        """The shipped migrations not applied yet, then the retention (run in the pool, as one call)."""
        db = self.database
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        client.command(f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
                       "applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version")
        applied = client.query(f"SELECT version FROM {db}.schema_migrations FINAL")  # noqa: S608
        done = {version for (version,) in applied.result_rows}
        folder = resources.files("ccproxy_analytics").joinpath("migrations")  # NNNN_name.sql, in order
        for name in sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql") and f.name[:4].isdigit()):
            version = int(name[:4])
            if version in done:
                continue
            log.info("analytics: applying migration %s", name)
            # One statement per ``;`` at a line end; comment-only parts are skipped.
            for part in re.split(r";\s*(?:\n|$)", folder.joinpath(name).read_text().replace("{db}", db)):
                text = "\n".join(ln for ln in part.splitlines() if not ln.strip().startswith("--")).strip()
                if text:
                    client.command(text)
            client.insert(f"{db}.schema_migrations", [[version, name]], column_names=["version", "name"])
        # The TTL from ANALYTICS__RETENTION_DAYS (0: none), checked at every start so a changed setting applies.
        rows = client.query("SELECT create_table_query FROM system.tables WHERE database = {db:String} "
                            "AND name = 'access_log'", parameters={"db": db}).result_rows
        current = rows[0][0] if rows else ""
        days = self.retention_days
        if days and f"toDateTime(started_at) + toIntervalDay({days})" not in current:
            client.command(f"ALTER TABLE {self.table} MODIFY TTL toDateTime(started_at) + INTERVAL {days} DAY")
        elif not days and re.search(r"\bTTL\b", current):
            client.command(f"ALTER TABLE {self.table} REMOVE TTL")

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))
        except Exception as exc:
            text = str(exc).split("\n")[0]
            raise ClickHouseUnavailable(f"{type(exc).__name__}: {text[:300]}") from exc

    async def ready(self) -> None:
        """Connect and apply migrations, once; raises ClickHouseUnavailable until it can."""
        async with self._lock:
            if self._client is None:
                self._client = await self._run(self._connect)
            if not self._migrated:
                await self._run(self._migrate, self._client)
                self._migrated = True

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts; ``{name:Type}`` placeholders bound server-side from ``params``."""
        await self.ready()
        result = await self._run(self._client.query, sql, parameters=params)
        return [_plain(row) for row in result.named_results()]

    async def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        await self.ready()
        await self._run(self._client.insert, table, rows, column_names=list(columns))

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(ClickHouseUnavailable):  # closing is best effort
                await self._run(client.close)
        self._pool.shutdown(wait=False)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """ClickHouse values as JSON-friendly Python: datetimes in UTC."""
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for k, v in row.items()}
