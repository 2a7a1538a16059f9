"""Prometheus metrics, one registry per service instance (so one process can host several).

Labels never carry secrets: routes are templates, accounts are names, keys are key ids.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.types import Scope

#: The route label of a request no route matched (a 404): one label, whatever the path was.
UNMATCHED = "<unmatched>"
#: Attribute :func:`label_routes` sets on a route inside a Mount: the Mount's template + its own.
_TEMPLATE_ATTR = "ccproxy_template"


def label_routes(routes: Iterable[BaseRoute], prefix: str = "") -> None:
    """Give every route inside a Mount its full template (Starlette's ``scope["route"]`` is the
    innermost route, whose ``path`` is relative to the Mount). Call once on an app's routes."""
    for route in routes:
        path = getattr(route, "path", None)
        if prefix and isinstance(path, str):
            setattr(route, _TEMPLATE_ATTR, prefix + path)
        if isinstance(route, Mount) and route.routes:
            label_routes(route.routes, prefix + route.path)


def route_label(scope: Scope) -> str:
    """The matched route's template (``/permissions/{request_id}``), never the raw path: labels
    from raw paths grow ``/metrics`` with every random URL anyone sends."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    template = getattr(route, _TEMPLATE_ATTR, None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.service = service
        #: ``SECURITY__METRICS_TOKEN``: when set, ``/metrics`` answers only ``Authorization: Bearer``
        #: it. In the stack every container (Claude Code's too) reaches the services' ports, and
        #: the metrics carry every key's tokens and cost.
        self.token: str | None = None
        self.requests = Counter(
            "ccproxy_requests_total", "Client requests by route and status",
            ["service", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "ccproxy_request_duration_seconds", "Time from request to the last byte of the answer",
            ["service", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.first_byte = Histogram(
            "ccproxy_time_to_first_byte_seconds", "Time from request to the first byte of the answer",
            ["service", "route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.upstream = Counter(
            "ccproxy_upstream_responses_total", "Upstream answers by status and account",
            ["service", "status", "account"], registry=self.registry,
        )
        self.tokens = Counter(
            "ccproxy_tokens_total",
            "Tokens by model, client key id and kind (input, output, cache_read, cache_write)",
            ["service", "model", "key", "kind"], registry=self.registry,
        )
        self.cost = Counter(
            "ccproxy_cost_usd_total", "Estimated cost in USD (list prices) by model and client key id",
            ["service", "model", "key"], registry=self.registry,
        )
        self.active_streams = Gauge(
            "ccproxy_active_streams", "Streams being relayed now", ["service"], registry=self.registry,
        )
        self.refreshes = Counter(
            "ccproxy_token_refreshes_total", "OAuth token refreshes by outcome",
            ["service", "outcome"], registry=self.registry,
        )
        self.cooldowns = Counter(
            "ccproxy_account_cooldowns_total", "Upstream accounts put in cooldown, by account and reason",
            ["service", "account", "reason"], registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ccproxy_queue_depth", "Jobs waiting in a queue (SDK runs)", ["service", "queue"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "ccproxy_queue_wait_seconds", "Time a job waited in a queue before a worker took it",
            ["service", "queue"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.permissions_pending = Gauge(
            "ccproxy_permission_requests_pending", "Tool-permission requests waiting for a decision",
            ["service"], registry=self.registry,
        )
        self.access_log_events = Counter(
            "ccproxy_access_log_events_total",
            "Access-log events by outcome (emitted, sent, dropped; analytics: inserted, invalid)",
            ["service", "outcome"], registry=self.registry,
        )
        self.access_log_buffered = Gauge(
            "ccproxy_access_log_buffered", "Access-log events held in memory because Redis is unreachable",
            ["service"], registry=self.registry,
        )
        self.access_log_backlog = Gauge(
            "ccproxy_access_log_backlog",
            "Access-log events in the Redis stream not yet written to ClickHouse (lag + pending)",
            ["service"], registry=self.registry,
        )
        self.access_log_insert_errors = Counter(
            "ccproxy_access_log_insert_errors_total", "Failed ClickHouse inserts (retried)",
            ["service"], registry=self.registry,
        )

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
