"""Prometheus metrics, a registry per service (one process may host several). Labels carry no
secret: routes are templates, accounts names, keys ids."""

from __future__ import annotations

import hmac
import time
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

UNMATCHED = "<unmatched>"


def route_label(scope: Scope) -> str:
    """The matched route's template, never the raw path (which would grow a label per random URL).
    Routes keep their whole paths (``ClosedMount``); a Starlette ``Mount`` with routes would need a prefix."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else UNMATCHED


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
M = TypeVar("M", Counter, Gauge, Histogram)


class Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.service = service
        #: ``SECURITY__METRICS_TOKEN``: every container (Claude Code's too) reaches the services' ports.
        self.token: str | None = None
        self.requests = self._add(Counter, "ccproxy_requests_total", "Client requests by route and status",
                                  "route", "status")
        self.latency = self._add(Histogram, "ccproxy_request_duration_seconds",
                                 "Time from request to the last byte of the answer", "route", "status")
        self.first_byte = self._add(Histogram, "ccproxy_time_to_first_byte_seconds",
                                    "Time from request to the first byte of the answer", "route")
        self.upstream = self._add(Counter, "ccproxy_upstream_responses_total",
                                  "Upstream answers by status and account", "status", "account")
        self.tokens = self._add(Counter, "ccproxy_tokens_total",
                                "Tokens by model, client key id and kind (input, output, cache_read, cache_write)",
                                "model", "key", "kind")
        self.cost = self._add(Counter, "ccproxy_cost_usd_total",
                              "Estimated cost in USD (list prices) by model and client key id", "model", "key")
        self.active_streams = self._add(Gauge, "ccproxy_active_streams", "Streams being relayed now")
        self.refreshes = self._add(Counter, "ccproxy_token_refreshes_total", "OAuth token refreshes by outcome",
                                   "outcome")
        self.cooldowns = self._add(Counter, "ccproxy_account_cooldowns_total",
                                   "Upstream accounts put in cooldown, by account and reason", "account", "reason")
        self.queue_depth = self._add(Gauge, "ccproxy_queue_depth", "Jobs waiting in a queue (SDK runs)", "queue")
        self.queue_wait = self._add(Histogram, "ccproxy_queue_wait_seconds",
                                    "Time a job waited in a queue before a worker took it", "queue")
        self.permissions_pending = self._add(Gauge, "ccproxy_permission_requests_pending",
                                             "Tool-permission requests waiting for a decision")
        self.access_log_events = self._add(Counter, "ccproxy_access_log_events_total",
                                           "Access-log events by outcome (emitted, sent, dropped; analytics: "
                                           "inserted, invalid)", "outcome")
        self.access_log_buffered = self._add(Gauge, "ccproxy_access_log_buffered",
                                             "Access-log events held in memory because Redis is unreachable")
        self.access_log_backlog = self._add(Gauge, "ccproxy_access_log_backlog", "Access-log events in the Redis "
                                            "stream not yet written to ClickHouse (lag + pending)")
        self.access_log_insert_errors = self._add(Counter, "ccproxy_access_log_insert_errors_total",
                                                  "Failed ClickHouse inserts (retried)")

    def answered(self, route: str, status: int, started: float, first_byte: float | None) -> None:
        """A request answered (now, ``started`` at ``perf_counter()``), ``first_byte`` seconds in."""
        self.requests.labels(self.service, route, str(status)).inc()
        self.latency.labels(self.service, route, str(status)).observe(time.perf_counter() - started)
        if first_byte is not None:
            self.first_byte.labels(self.service, route).observe(first_byte)

    def _add(self, kind: type[M], name: str, doc: str, *labels: str) -> M:
        extra: dict[str, Any] = {"buckets": LATENCY_BUCKETS} if kind is Histogram else {}
        return kind(name, doc, ["service", *labels], registry=self.registry, **extra)

    def guarded(self, token: object | None) -> Metrics:
        """Ask for ``token`` (a SecretStr, or None: open) on ``/metrics``; returns self."""
        value = getattr(token, "get_secret_value", lambda: token)()
        self.token = str(value) if value else None
        return self

    async def endpoint(self, request: Request) -> Response:
        if self.token is not None:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode()):
                return JSONResponse({"error": "/metrics needs Authorization: Bearer <SECURITY__METRICS_TOKEN>"},
                                    status_code=401)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
