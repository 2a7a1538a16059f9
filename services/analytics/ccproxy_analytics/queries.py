"""The log query API's SQL (the same on chDB and a ClickHouse server): filters, keyset pages, usage totals.

Every value is a server-side bound parameter (``{name:Type}``); only the database name (checked to be an
identifier) and column names from fixed lists are spliced into the SQL."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ccproxy_analytics.consumer import COLUMNS
from ccproxy_core.access_log import AccessLogEvent, parse_time
from ccproxy_core.errors import ProxyError

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: An HTTP status (ASCII digits only: str.isdigit() also accepts "²", which int() refuses) or a class.
STATUS = re.compile(r"[0-9]{1,3}|[1-5]xx")
#: DateTime64's range: times past it are clamped (year 1 or 9999 made the query fail with a 503).
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)

#: ``group_by`` names of /logs/usage and the column (or alias) each groups on.
GROUPS = {"key": "key_id", "account": "account", "model": "model", "mode": "mode", "endpoint": "endpoint",
          "outcome": "outcome", "status": "status", "error_type": "error_type"}
#: The ``model`` a request is grouped under: the one that answered, else the one asked for.
MODEL = "if(model_used != '', model_used, model_requested) AS model"
TOTALS = [
    "count() AS requests", "countIf(outcome = 'error') AS errors", "countIf(outcome = 'cancelled') AS cancelled",
    *(f"sum({tokens}) AS {tokens}" for tokens in ("input_tokens", "output_tokens", "cache_read_tokens",
                                                  "cache_write_tokens")),
    "round(sum(cost_usd), 6) AS cost_usd", "round(sum(ifNull(sdk_cost_usd, 0)), 6) AS sdk_cost_usd",
    *(f"round(quantile({q / 100})({name}_ms), 3) AS {name}_p{q}_ms" for name in ("duration", "ttft") for q in (50, 95)),
]
BUCKETS = {"minute": "toStartOfMinute(started_at)", "hour": "toStartOfHour(started_at)",
           "day": "toStartOfDay(started_at)", "none": None}

#: Filters on one column's value.
_EQUAL = {"key": "key_id", "account": "account", "mode": "mode", "outcome": "outcome"}


def _dt(value: datetime) -> str:
    """A DateTime64(3, 'UTC') parameter."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class Filters:
    since: datetime
    until: datetime
    key: str | None = None
    account: str | None = None
    model: str | None = None
    status: str | None = None
    mode: str | None = None
    outcome: str | None = None

    @classmethod
    def from_query(cls, q: dict[str, str]) -> Filters:
        try:
            until = parse_time(q["until"]) if q.get("until") else datetime.now(UTC) + timedelta(minutes=1)
            since = parse_time(q["since"]) if q.get("since") else until - timedelta(days=1)
        except (ValueError, OverflowError, OSError) as exc:  # OSError: a time the OS cannot convert
            raise ProxyError(400, f"since/until: not a time ({exc}); use ISO 8601 or epoch seconds") from exc
        values = {name: q.get(name) or None for name in ("key", "account", "model", "status", "mode", "outcome")}
        if values["status"] is not None and not STATUS.fullmatch(values["status"]):
            raise ProxyError(400, "status: an HTTP status (429) or a class (4xx)", param="status")
        for name, allowed in (("mode", ("api", "sdk")), ("outcome", ("ok", "error", "cancelled"))):
            if values[name] is not None and values[name] not in allowed:
                raise ProxyError(400, f"{name}: one of {', '.join(allowed)}", param=name)
        return cls(since=min(max(since, EARLIEST), LATEST), until=min(max(until, EARLIEST), LATEST), **values)

    def where(self) -> tuple[list[str], dict[str, Any]]:
        clauses = ["started_at >= {since:DateTime64(3, 'UTC')}", "started_at < {until:DateTime64(3, 'UTC')}"]
        params: dict[str, Any] = {"since": _dt(self.since), "until": _dt(self.until)}
        for name, column in _EQUAL.items():
            if (value := getattr(self, name)) is not None:
                clauses.append(f"{column} = {{{name}:String}}")
                params[name] = value
        if self.model is not None:
            clauses.append("(model_used = {model:String} OR model_requested = {model:String})")
            params["model"] = self.model
        if self.status is not None:
            if self.status.isdigit():
                clauses.append("status = {status:UInt16}")
                params["status"] = int(self.status)
            else:
                clauses.append("intDiv(status, 100) = {status_class:UInt8}")
                params["status_class"] = int(self.status[0])
        return clauses, params

    def matches(self, event: AccessLogEvent) -> bool:
        """What :meth:`where` selects, for one event (the live stream's filter)."""
        if any((value := getattr(self, name)) is not None and getattr(event, column) != value
               for name, column in _EQUAL.items()):
            return False
        if self.model is not None and self.model not in (event.model_used, event.model_requested):
            return False
        code = str(event.status)
        return self.status is None or (code == self.status if self.status.isdigit() else code[0] == self.status[0])


def encode_cursor(last: dict[str, Any]) -> str:
    """Names the last row of a page; the next page starts after it."""
    ms = round(last["started_at"].timestamp() * 1000)
    return base64.urlsafe_b64encode(f"{ms}|{last['request_id']}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """400 for anything but a cursor we made: a forged one may decode to a number no datetime can hold."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, _, request_id = raw.partition("|")
        # At most 10^13 ms: DateTime64's range ends in 2299.
        if not (ms.isascii() and ms.isdigit() and len(ms) <= 14 and int(ms) < 10**13):
            raise ValueError("not a time in milliseconds")
        return datetime.fromtimestamp(int(ms) / 1000, UTC), request_id
    except (ValueError, UnicodeDecodeError, OverflowError, OSError) as exc:
        raise ProxyError(400, "cursor: not a cursor this API returned", param="cursor") from exc


def parse_limit(value: str | None) -> int:
    if not value:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise ProxyError(400, f"limit: an integer from 1 to {MAX_LIMIT}", param="limit")
    return int(value)


def logs_query(table: str, filters: Filters, limit: int, cursor: str | None) -> tuple[str, dict[str, Any]]:
    """Newest first; the cursor continues after the last row of the previous page."""
    clauses, params = filters.where()
    if cursor:
        ts, request_id = decode_cursor(cursor)
        clauses.append("(started_at, request_id) < ({cursor_ts:DateTime64(3, 'UTC')}, {cursor_id:String})")
        params["cursor_ts"], params["cursor_id"] = _dt(ts), request_id
    params["limit"] = limit + 1  # one more tells whether there is a next page
    sql = (f"SELECT {', '.join(COLUMNS)} FROM {table} FINAL WHERE {' AND '.join(clauses)} "  # noqa: S608
           "ORDER BY started_at DESC, request_id DESC LIMIT {limit:UInt32}")
    return sql, params


def usage_query(table: str, filters: Filters, group_by: list[str], bucket: str) -> tuple[str, dict[str, Any]]:
    """:data:`TOTALS` per group and time bucket."""
    if unknown := [g for g in group_by if g not in GROUPS]:
        raise ProxyError(400, f"group_by: unknown {unknown}; choose from {sorted(GROUPS)}", param="group_by")
    if bucket not in BUCKETS:
        raise ProxyError(400, f"bucket: one of {sorted(BUCKETS)}", param="bucket")
    clauses, params = filters.where()
    select, keys = ([f"{BUCKETS[bucket]} AS bucket"], ["bucket"]) if BUCKETS[bucket] else ([], [])
    for name in group_by:
        select.append(MODEL if name == "model" else GROUPS[name])
        keys.append(GROUPS[name])
        if name == "key":
            select.append("any(key_name) AS key_name")
    sql = f"SELECT {', '.join(select + TOTALS)} FROM {table} FINAL WHERE {' AND '.join(clauses)}"  # noqa: S608
    if keys:
        sql += f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}"
    return sql, params
