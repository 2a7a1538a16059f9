"""``SECURITY__METRICS_TOKEN`` on every service's own ``/metrics``: the stack's containers (Claude
Code's, in the sdk-worker) reach those ports, and the metrics carry every key's tokens and cost."""

from __future__ import annotations

import httpx2 as httpx
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Route

from ccproxy_core.metrics import Metrics


async def scrape(metrics: Metrics, headers: dict[str, str] | None = None) -> httpx.Response:
    app = Starlette(routes=[Route("/metrics", metrics.endpoint, methods=["GET"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        return await client.get("/metrics", headers=headers or {})


async def test_metrics_ask_for_the_token_when_one_is_set() -> None:
    metrics = Metrics("gateway").guarded(SecretStr("scrape-token-0123456789"))
    metrics.cost.labels("gateway", "claude-sonnet-4-6", "k_member").inc(1.5)
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": "scrape-token-0123456789"},
                    {"x-api-key": "scrape-token-0123456789"}):
        refused = await scrape(metrics, headers)
        assert refused.status_code == 401 and "k_member" not in refused.text
        assert "scrape-token-0123456789" not in refused.text
    scraped = await scrape(metrics, {"authorization": "Bearer scrape-token-0123456789"})
    assert scraped.status_code == 200 and 'key="k_member"' in scraped.text


async def test_metrics_stay_open_without_a_token() -> None:
    for token in (None, SecretStr("")):
        assert (await scrape(Metrics("auth").guarded(token))).status_code == 200
