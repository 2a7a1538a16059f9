"""ClickHouse, through one client for both places it runs.

``clickhouse-connect`` speaks ClickHouse's HTTP interface to a server (``CLICKHOUSE__URL``,
e.g. ``http://default:secret@clickhouse:8123``) and, with a ``chdb://`` DSN, drives chDB (the
same engine, in process) for ``ccproxy serve``. The SQL, the schema and the Native wire format
are the same either way. The client is synchronous, so calls run in a small thread pool; chDB
calls are kept to one thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseUnavailable(Exception):
    """ClickHouse could not be reached or refused the statement; the caller retries."""


def embedded_dsn(data_dir: Path) -> str:
    return f"chdb://{(data_dir / 'clickhouse').resolve()}"


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in the package, in order."""
    folder = resources.files("ccproxy_analytics").joinpath("migrations")
    return sorted((int(f.name[:4]), f.name, f.read_text()) for f in folder.iterdir()
                  if f.name.endswith(".sql") and f.name[:4].isdigit())


def statements(sql: str) -> list[str]:
    """Split a migration file on ``;`` at line ends, dropping comment-only parts."""
    parts = re.split(r";\s*(?:\n|$)", sql)
    out = []
    for part in parts:
        lines = [ln for ln in part.splitlines() if not ln.strip().startswith("--")]
        text = "\n".join(lines).strip()
        if text:
            out.append(text)
    return out


class ClickHouse:
    def __init__(self, dsn: str, database: str = "ccproxy", retention_days: int = 0) -> None:
        if not IDENTIFIER.match(database):
            raise ValueError(f"invalid ClickHouse database name {database!r}")
        self.dsn = dsn
        self.database = database
        self.retention_days = max(0, int(retention_days))
        self.backend = "chdb" if dsn.startswith("chdb:") else "http"
        self._pool = ThreadPoolExecutor(max_workers=1 if self.backend == "chdb" else 4, thread_name_prefix="ch")
        self._client: Any = None
        self._migrated = False
        self._lock = asyncio.Lock()

    @property
    def table(self) -> str:
        return f"{self.database}.access_log"

    def _connect(self) -> Any:
        import clickhouse_connect

        if self.backend == "chdb":
            return clickhouse_connect.get_client(dsn=self.dsn)
        # Short timeouts: an outage is noticed in seconds and retried by the caller.
        return clickhouse_connect.get_client(
            dsn=self.dsn, connect_timeout=5, send_receive_timeout=60, query_retries=0,
            autogenerate_session_id=False,
        )

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def ready(self) -> None:
        """Connect and apply migrations, once; raises ClickHouseUnavailable until it can."""
        if self._client is not None and self._migrated:
            return
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await self._run(self._connect)
                except Exception as exc:
                    raise ClickHouseUnavailable(self._describe(exc)) from exc
            if not self._migrated:
                await self._migrate()
                self._migrated = True

    async def _migrate(self) -> None:
        db = self.database
        await self._command(f"CREATE DATABASE IF NOT EXISTS {db}")
        await self._command(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
            "applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version"
        )
        applied = await self._query(f"SELECT version FROM {db}.schema_migrations FINAL")  # noqa: S608
        done = {row["version"] for row in applied}
        for version, name, sql in migrations():
            if version in done:
                continue
            log.info("analytics: applying migration %s", name)
            for statement in statements(sql.replace("{db}", db)):
                await self._command(statement)
            await self._insert(f"{db}.schema_migrations", [[version, name]], ["version", "name"])
        await self._apply_retention()

    async def _apply_retention(self) -> None:
        """The access log's TTL from ``ANALYTICS__RETENTION_DAYS`` (0: none), set at every start so
        a changed setting applies; left alone when the table already has it."""
        rows = await self._query(
            "SELECT create_table_query AS q FROM system.tables WHERE database = {db:String} AND name = 'access_log'",
            {"db": self.database},
        )
        current = rows[0]["q"] if rows else ""
        has_ttl = re.search(r"\bTTL\b", current) is not None
        if self.retention_days:
            wanted = f"toDateTime(started_at) + toIntervalDay({self.retention_days})"
            if wanted not in current:
                await self._command(f"ALTER TABLE {self.table} MODIFY TTL toDateTime(started_at) + "
                                    f"INTERVAL {self.retention_days} DAY")
        elif has_ttl:
            await self._command(f"ALTER TABLE {self.table} REMOVE TTL")

    def _describe(self, exc: BaseException) -> str:
        text = str(exc).split("\n")[0]
        return f"{type(exc).__name__}: {text[:300]}"

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._run(getattr(self._client, method), *args, **kwargs)
        except Exception as exc:
            raise ClickHouseUnavailable(self._describe(exc)) from exc

    async def _command(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return await self._call("command", sql, parameters=params)

    async def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = await self._call("query", sql, parameters=params)
        return [_plain(row) for row in result.named_results()]

    async def _insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> int:
        summary = await self._call("insert", table, rows, column_names=list(columns))
        return int(getattr(summary, "written_rows", len(rows)))

    async def command(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        await self.ready()
        return await self._command(sql, params)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts; ``{name:Type}`` placeholders bound server-side from ``params``."""
        await self.ready()
        return await self._query(sql, params)

    async def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> int:
        await self.ready()
        return await self._insert(table, rows, columns)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await self._run(client.close)
            except Exception as exc:  # closing is best effort
                log.debug("clickhouse close: %s", exc)
        self._pool.shutdown(wait=False)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """ClickHouse values as JSON-friendly Python: datetimes in UTC."""
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for k, v in row.items()}
