"""ClickHouse goes down mid-run and comes back: every request is accounted for, none twice.

Real parts only: the real Redis, ``ccproxy serve`` as the gateway switched to it and to a
ClickHouse server (``REDIS__URL``, ``CLICKHOUSE__URL``), ``ccproxy run analytics`` as a second
consumer in the same group, and the ClickHouse engine (chDB behind ClickHouse's HTTP interface,
``tests/chdb_http.py``), killed and started again on the same port and data directory.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from tests.analytics.conftest import ChdbServer
from tests.support.ports import free_port
from tests.support.process import Proc, start_process, wait_until
from tests.support.serve import REPO_ROOT, isolated_env

TOKEN = "cc-test-token-outage-0123456789"
SECRET = "internal-secret-0123456789abcdef"
MODEL = "claude-sonnet-4-5"


@pytest.fixture
def env(chdb_server: ChdbServer, key_prefix: str) -> dict[str, str]:
    return {
        "REDIS__URL": "redis://127.0.0.1:6379/0",
        "REDIS__KEY_PREFIX": key_prefix,
        "CLICKHOUSE__URL": chdb_server.url,
        "CLICKHOUSE__DATABASE": f"outage_{uuid.uuid4().hex[:8]}",
        "SECURITY__AUTH_TOKEN": TOKEN,
        "SECURITY__INTERNAL_SECRET": SECRET,
        "ANALYTICS__BATCH_SECONDS": "0.1",
        "ANALYTICS__BACKLOG_WARNING": "3",
    }


@pytest.fixture
def analytics(env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    port = free_port()
    run = tmp_path / "analytics"
    proc = start_process(
        [sys.executable, "-m", "ccproxy_core", "run", "analytics", "--port", str(port)],
        url=f"http://127.0.0.1:{port}", health_url=f"http://127.0.0.1:{port}/health",
        log_path=run / "analytics.log", env=isolated_env(run, overrides=env), cwd=REPO_ROOT, port=port,
    )
    yield proc
    proc.stop()


def stored(server: ChdbServer, database: str) -> dict[str, int]:
    client = server.client()
    try:
        raw = client.query(f"SELECT count() FROM {database}.access_log").result_rows[0][0]  # noqa: S608
        final = client.query(
            f"SELECT count(), uniqExact(request_id) FROM {database}.access_log FINAL"  # noqa: S608
        ).result_rows[0]
    finally:
        client.close()
    return {"raw": raw, "final": final[0], "distinct": final[1]}


def ids_in_clickhouse(server: ChdbServer, database: str) -> list[str]:
    client = server.client()
    try:
        sql = f"SELECT upstream_request_id FROM {database}.access_log FINAL"  # noqa: S608
        return [r[0] for r in client.query(sql).result_rows]
    finally:
        client.close()


def metric(proc: Proc, name: str) -> float:
    for line in httpx.get(proc.url + "/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_clickhouse_outage_loses_and_duplicates_nothing(
    chdb_server: ChdbServer, analytics: Proc, env: dict[str, str], start_serve: Callable[..., Proc]
) -> None:
    database = env["CLICKHOUSE__DATABASE"]
    gateway = start_serve(env=env)
    client = anthropic.Anthropic(base_url=gateway.url + "/api", api_key=TOKEN, max_retries=0)
    sent: list[str] = []

    def ask(n: int) -> None:
        for i in range(n):
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=20, messages=[{"role": "user", "content": f"request {len(sent)} {i}"}]
            )
            assert raw.http_response.status_code == 200
            sent.append(raw.headers["request-id"])

    ask(5)
    wait_until(lambda: stored(chdb_server, database)["final"] == 5, timeout=20, interval=0.1,
               message="the first 5 requests in ClickHouse")

    chdb_server.stop()
    ask(10)  # clients are served as if nothing happened
    status = wait_until(
        lambda: (s := httpx.get(gateway.url + "/logs/status", headers={"x-api-key": TOKEN}).json())
        ["consumer"]["backlog"] > 0 and s,
        timeout=20, interval=0.1, message="the backlog to show in /logs/status",
    )
    assert status["status"] == "degraded" and status["clickhouse"]["available"] is False
    assert any("ClickHouse" in w for w in status["warnings"])
    wait_until(lambda: metric(analytics, "ccproxy_access_log_backlog") > 0 or
               metric(gateway, "ccproxy_access_log_backlog") > 0, timeout=20, interval=0.1,
               message="the backlog metric")
    down = httpx.get(gateway.url + "/logs/query", headers={"x-api-key": TOKEN})
    assert down.status_code == 503 and down.headers["retry-after"]
    # The database client's own text (its host, port, exception) stays in the log.
    assert "Error" not in down.text and str(chdb_server.port) not in down.text, down.text

    chdb_server.start()
    wait_until(lambda: stored(chdb_server, database)["final"] == 15, timeout=30, interval=0.1,
               message="all 15 requests in ClickHouse after it came back")
    counts = stored(chdb_server, database)
    assert counts["final"] == counts["distinct"] == 15
    assert sorted(ids_in_clickhouse(chdb_server, database)) == sorted(sent)
    assert "wait to be written" in analytics.log_text() + gateway.log_text()  # the backlog warning

    # The analytics service's own log API (Traefik routes /logs here in the stack).
    url = analytics.url + "/logs/query"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"x-api-key": "not-the-token-0000"}).status_code == 401
    answer = httpx.get(url, params={"limit": 100}, headers={"x-api-key": TOKEN})
    assert answer.status_code == 200
    rows: list[dict[str, Any]] = answer.json()["data"]
    assert sorted(r["upstream_request_id"] for r in rows) == sorted(sent)
    assert all(r["key_id"] == "default" for r in rows)
