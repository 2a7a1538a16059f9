"""Issue 13, observability and information leaks: what anonymous callers, members, a Redis
outage, a dead refresh token, a slow client and a misbehaving upstream can make ``ccproxy serve``
say, hold, count or log. Every test drives real processes (``ccproxy serve``, the fake upstream,
a redis-server of the test's own where Redis must fail)."""

from __future__ import annotations

import re
import secrets
from typing import Any

import httpx2 as httpx

TOKEN = "cc-faults-observability-token-0123456789"
MODEL = "claude-sonnet-4-6"


def metric_labels(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name`` in a Prometheus text page."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)\{(.*)\} \S+$", line)
        if m and m.group(1) == name:
            out.append(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2))))
    return out


# -- 7: /metrics does not grow with random paths ---------------------------------------------------


def test_random_paths_do_not_grow_metrics(start_serve: Any) -> None:
    """2,000 unauthenticated requests to random paths (401 on a parameterised route, 404 on no
    route) leave /metrics the size it was: labels are route templates, one label for "no route"."""
    proc = start_serve(env={"SECURITY__AUTH_TOKEN": TOKEN})
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        # One of each first, so every label that will exist exists before the baseline.
        assert client.get("/permissions/warm-up").status_code == 401
        assert client.get("/nope/warm-up").status_code == 404
        before = client.get("/metrics").text
        seen = []
        for i in range(1000):
            for path in (f"/permissions/{secrets.token_hex(8)}", f"/nope/{secrets.token_hex(8)}/{i}"):
                seen.append(path)
                resp = client.get(path)
                assert resp.status_code in (401, 404), (path, resp.status_code)
                assert resp.json()["type"] == "error"
        after = client.get("/metrics").text
    assert len(after) - len(before) < 5_000, (len(before), len(after))
    routes = {labels["route"] for labels in metric_labels(after, "ccproxy_requests_total")}
    assert "/permissions/{request_id}" in routes and "<unmatched>" in routes, routes
    assert not any(path in after for path in seen[::97])
    assert not any("warm-up" in route for route in routes), routes
