"""Every SQL query in deploy/grafana runs on a real ClickHouse engine holding an access log.

Grafana cannot run here, so its part is done by hand, exactly as the ClickHouse plugin
(grafana-clickhouse-datasource, ``pkg/macros/macros.go``) does it: the macros are expanded with
a time range and interval, the dashboard variables are interpolated (one value as
``${var:singlequote}`` formats it; "All" as the variable's custom value, which Grafana inserts as
written, unquoted), and the result goes to chDB behind ClickHouse's HTTP interface
through ``clickhouse-connect``. The table is created by the analytics service's own migrations,
and the data are access-log events as the gateway emits them, one of them written twice.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ccproxy_analytics.consumer import COLUMNS, row
from ccproxy_analytics.store import ClickHouse
from ccproxy_core.access_log import AccessLogEvent
from tests.analytics.conftest import ChdbServer
from tests.support.ports import free_port
from tests.support.serve import REPO_ROOT

GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
KNOWN_MACROS = {"timeFilter", "timeFilter_ms", "fromTime", "toTime", "fromTime_ms", "toTime_ms",
                "dateFilter", "timeInterval", "timeInterval_ms", "interval_s"}
MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")
VARIABLE = re.compile(r"\$\{(\w+):singlequote\}")


class AllValue(str):
    """The "All" selection of a variable with a custom ``allValue`` (Grafana inserts it unformatted)."""


def expand(sql: str, start: datetime, end: datetime, interval_s: int,
           values: dict[str, list[str] | AllValue]) -> str:
    """What the plugin sends: macros as in pkg/macros/macros.go, variables as Grafana formats them."""
    frm, to = int(start.timestamp()), int(end.timestamp())
    frm_ms, to_ms = frm * 1000, to * 1000

    def macro(m: re.Match[str]) -> str:
        name, arg = m.group(1), (m.group(2) or "").strip()
        assert name in KNOWN_MACROS, f"unknown macro $__{name}"
        return {
            "timeFilter": f"{arg} >= toDateTime({frm}) AND {arg} <= toDateTime({to})",
            "timeFilter_ms": (
                f"{arg} >= fromUnixTimestamp64Milli({frm_ms}) AND {arg} <= fromUnixTimestamp64Milli({to_ms})"
            ),
            "fromTime": f"toDateTime({frm})",
            "toTime": f"toDateTime({to})",
            "fromTime_ms": f"fromUnixTimestamp64Milli({frm_ms})",
            "toTime_ms": f"fromUnixTimestamp64Milli({to_ms})",
            "dateFilter": f"{arg} >= toDate('{start:%Y-%m-%d}') AND {arg} <= toDate('{end:%Y-%m-%d}')",
            "timeInterval": f"toStartOfInterval(toDateTime({arg}), INTERVAL {interval_s} second)",
            "timeInterval_ms": f"toStartOfInterval(toDateTime64({arg}, 3), INTERVAL {interval_s * 1000} millisecond)",
            "interval_s": str(interval_s),
        }[name]

    def variable(m: re.Match[str]) -> str:
        chosen = values[m.group(1)]
        if isinstance(chosen, AllValue):
            # Grafana inserts a variable's custom "All" value as written, whatever the format.
            return str(chosen)
        return ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in chosen)

    out = VARIABLE.sub(variable, MACRO.sub(macro, sql))
    assert "$" not in out, f"unexpanded template syntax left in: {out}"
    return out


def event(n: int, now: datetime, **fields: Any) -> AccessLogEvent:
    started = now - timedelta(minutes=5 * n)
    base: dict[str, Any] = {
        "request_id": f"req_{n:04d}", "started_at": started, "first_byte_at": started + timedelta(milliseconds=40),
        "finished_at": started + timedelta(milliseconds=900), "duration_ms": 900.0 + n, "ttft_ms": 35.0 + n,
        "endpoint": "/api/v1/messages", "key_id": f"key_{n % 3}", "key_name": ["alice", "bob", "carol"][n % 3],
        "account": ["work", "personal"][n % 2], "model_requested": "claude-sonnet-4-5",
        "model_used": ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"][n % 2], "stream": True,
        "status": 200, "input_tokens": 100 + n, "output_tokens": 50 + n, "cache_read_tokens": 10,
        "cache_write_tokens": 5, "cost_usd": 0.001 * (n + 1), "quota_status": "allowed",
        "quota_5h_utilization": 0.1 + n / 100, "quota_7d_utilization": 0.05 + n / 200,
    }
    return AccessLogEvent.model_validate(base | fields)


def sample_events(now: datetime) -> list[AccessLogEvent]:
    events = [event(n, now) for n in range(24)]
    events += [
        event(30, now, status=429, error_type="rate_limit_error", retry_after_s=30.0, quota_status="rejected",
              outcome="error", output_tokens=0),
        event(31, now, status=529, error_type="overloaded_error", retry_after_s=5.0, outcome="error"),
        event(32, now, status=200, error_type="overloaded_error", outcome="error"),  # failed mid-stream
        event(33, now, status=499, outcome="cancelled", stream=False, ttft_ms=None),
        event(34, now, status=401, error_type="authentication_error", outcome="error", key_id="anonymous",
              key_name="", account="", model_used="", input_tokens=0, output_tokens=0, cost_usd=0.0,
              quota_status="", quota_5h_utilization=None, quota_7d_utilization=None, first_byte_at=None),
    ]
    events += [
        event(40 + n, now, mode="sdk", endpoint="/sdk/v1/messages", sdk_session_id=f"s{n}", sdk_turns=3 + n,
              sdk_tool_uses=2 * n, permissions_requested=n, permissions_approved=max(n - 1, 0),
              permissions_denied=1 if n else 0, sdk_cost_usd=0.02 * n, outcome="error" if n == 3 else "ok",
              status=500 if n == 3 else 200, error_type="api_error" if n == 3 else "")
        for n in range(4)
    ]
    # Each run's Claude Code calls: /api events of the run's member, under its session, with the cost.
    events += [
        event(50 + 2 * n + call, now, sdk_session_id=f"s{n}", key_id=f"key_{(40 + n) % 3}",
              key_name=["alice", "bob", "carol"][(40 + n) % 3], cost_usd=0.25)
        for n in range(4) for call in range(2)
    ]
    return events


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, datetime]]:
    tmp = tmp_path_factory.mktemp("grafana")
    port = free_port()
    server = ChdbServer(
        "chdb-http", [sys.executable, "-m", "tests.chdb_http", "--port", str(port), "--path", str(tmp / "chdb")],
        port, tmp, health=f"http://127.0.0.1:{port}/ping",
    )
    server.start()
    now = datetime.now(UTC).replace(microsecond=0)

    async def load() -> None:
        store = ClickHouse(server.url, database="ccproxy")  # the database the dashboards name
        rows = [row(e) for e in sample_events(now)]
        await store.insert(store.table, rows, COLUMNS)
        await store.insert(store.table, rows[:1], COLUMNS)  # a duplicate: FINAL must hide it
        await store.aclose()

    asyncio.run(load())
    client = server.client()
    try:
        yield client, now
    finally:
        client.close()
        server.stop()


def test_dashboards_exist_and_use_the_provisioned_datasource() -> None:
    names = {p.stem for p in DASHBOARDS}
    assert {"ccproxy-usage", "ccproxy-latency", "ccproxy-errors", "ccproxy-accounts", "ccproxy-sdk"} <= names
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    ds = datasource["datasources"][0]
    assert ds["type"] == "grafana-clickhouse-datasource" and ds["jsonData"]["protocol"] == "http"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ccproxy.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] == path.stem
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == ds["uid"], (path.name, panel["title"])
                assert target["editorType"] == "sql" and target["rawSql"].strip()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_runs_and_finds_the_data(path: Path, clickhouse: tuple[Any, datetime]) -> None:
    client, now = clickhouse
    dashboard = json.loads(path.read_text())
    start, end = now - timedelta(hours=24), now + timedelta(minutes=1)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    # Variable queries first: their answers are the values a user can pick.
    choices: dict[str, list[str]] = {}
    for name, var in variables.items():
        result = client.query(expand(var["query"], start, end, 60, {}))
        choices[name] = [str(r[0]) for r in result.result_rows]
        assert choices[name], f"{path.name}: variable {name} offers nothing"

    selections: list[dict[str, list[str] | AllValue]] = [
        {name: AllValue(var["allValue"]) for name, var in variables.items()}]  # "All"
    selections.append({name: [choices[name][0]] for name in variables})  # one value each
    checked = 0
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            for selection in selections:
                sql = expand(target["rawSql"], start, end, 300, selection)
                started = time.perf_counter()
                result = client.query(sql)
                assert time.perf_counter() - started < 10
                if selection is selections[0]:
                    assert result.result_rows, f"{path.name}: panel {panel['title']!r} returned no rows"
                    if panel["type"] == "timeseries":
                        assert "time" in result.column_names, f"{panel['title']}: no time column"
            checked += 1
    assert checked == sum(len(p.get("targets", [])) for p in panels(dashboard))


def test_queries_count_a_duplicated_event_once(clickhouse: tuple[Any, datetime]) -> None:
    client, now = clickhouse
    usage = json.loads((GRAFANA / "dashboards" / "ccproxy-usage.json").read_text())
    requests = next(p for p in panels(usage) if p["title"] == "Requests")
    sql = expand(requests["targets"][0]["rawSql"], now - timedelta(days=1), now + timedelta(minutes=1), 60,
                 {name: AllValue(v["allValue"]) for name, v in
                  ((v["name"], v) for v in usage["templating"]["list"])})
    assert client.query(sql).result_rows[0][0] == len(sample_events(now))


def test_sdk_runs_by_member_counts_runs_and_the_cost_of_their_calls(clickhouse: tuple[Any, datetime]) -> None:
    """A run's cost is on its Claude Code's /api events (its /sdk event carries none): the SDK
    table counts runs from the /sdk events and the list cost from the run's calls, each once."""
    client, now = clickhouse
    sdk = json.loads((GRAFANA / "dashboards" / "ccproxy-sdk.json").read_text())
    table = next(p for p in panels(sdk) if p["title"] == "SDK runs by member")
    sql = expand(table["targets"][0]["rawSql"], now - timedelta(days=1), now + timedelta(minutes=1), 60,
                 {v["name"]: AllValue(v["allValue"]) for v in sdk["templating"]["list"]})
    result = client.query(sql)
    rows = {r[0]: dict(zip(result.column_names, r, strict=True)) for r in result.result_rows}
    runs = [e for e in sample_events(now) if e.mode == "sdk"]
    calls = [e for e in sample_events(now) if e.mode == "api" and e.sdk_session_id]
    assert sum(r["runs"] for r in rows.values()) == len(runs) == 4
    for member, shown in rows.items():
        mine = [e for e in calls if e.key_name == member]
        assert shown["list_cost_usd"] == pytest.approx(sum(e.cost_usd for e in mine)) and mine, member
        assert shown["runs"] == sum(1 for e in runs if e.key_name == member)
