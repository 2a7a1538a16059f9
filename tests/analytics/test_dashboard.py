"""``/dashboard`` in headless Chromium: the page loads over ``ccproxy serve``, draws its charts
with data (uPlot canvases with pixels on them), lists usage, and shows a new request live."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from tests.support.browser import Page, chromium_path
from tests.support.process import Proc, wait_until

TOKEN = "cc-test-token-dashboard-012345"
pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium missing: run scripts/setup-test-deps.sh")

# Safe while the page is still loading (no element yet: falsy, not an error).
READY = "document.body?.dataset.ready"
LIVE_ROWS = "+document.getElementById('live')?.dataset.rows"

CHARTS = """JSON.stringify([...document.querySelectorAll('.chart')].map(el => {
  const canvas = el.querySelector('canvas');
  let painted = 0;
  if (canvas) {
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
  }
  return {id: el.id, series: +el.dataset.series, points: +el.dataset.points, painted};
}))"""


async def test_dashboard_draws_charts_with_data(start_serve: Callable[..., Proc], page: Page, tmp_path: Path) -> None:
    serve = start_serve(env={"SECURITY__AUTH_TOKEN": TOKEN, "ANALYTICS__BATCH_SECONDS": "0.1"})
    client = anthropic.Anthropic(base_url=serve.url + "/api", api_key=TOKEN, max_retries=0)
    for model in ("claude-sonnet-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"):
        client.messages.create(model=model, max_tokens=30, messages=[{"role": "user", "content": "hi"}])
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=30,
                                messages=[{"role": "user", "content": "stream"}]) as stream:
        stream.until_done()
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=30,
                               messages=[{"role": "user", "content": "[[fake:error=500]]"}])
    wait_until(lambda: len(httpx.get(serve.url + "/logs/query", headers={"x-api-key": TOKEN}).json()["data"]) == 5,
               timeout=20, interval=0.1, message="5 requests logged")

    html = httpx.get(serve.url + "/dashboard")
    assert html.status_code == 200 and "uPlot.iife.min.js" in html.text
    assert httpx.get(serve.url + "/dashboard/static/vendor/uplot/uPlot.iife.min.js").status_code == 200

    # The key travels in the fragment: the page keeps it and never sends it in a URL.
    await page.send("Page.navigate", url=f"{serve.url}/dashboard#key={TOKEN}")
    ready = await page.until(f"{READY} !== '0' && {READY}", "the dashboard's first load")
    assert ready == "1", await page.evaluate("document.getElementById('status').textContent")
    await page.until(f"{LIVE_ROWS} === 5", "5 live rows")
    charts: list[dict[str, Any]] = json.loads(await page.evaluate(CHARTS))
    by_id = {c["id"]: c for c in charts}
    assert set(by_id) == {"chart-requests", "chart-cost", "chart-tokens", "chart-latency"}
    for chart in charts:
        assert chart["points"] > 0 and chart["painted"] > 500, chart  # drawn, with data
    assert by_id["chart-cost"]["series"] == 2  # one line per model
    assert by_id["chart-requests"]["series"] == 2  # requests and errors
    assert await page.evaluate("document.getElementById('total-requests').textContent") == "5"
    assert await page.evaluate("document.getElementById('total-errors').textContent") == "1"
    usage_rows = await page.evaluate("document.querySelectorAll('#usage tbody tr').length")
    assert usage_rows == 2  # key x model
    assert "api_error" in await page.evaluate("document.getElementById('errors').textContent")
    assert TOKEN not in await page.evaluate("location.href")

    # A new request appears in the live table without a reload.
    client.messages.create(model="claude-haiku-4-5", max_tokens=30, messages=[{"role": "user", "content": "live"}])
    await page.until(f"{LIVE_ROWS} === 6", "the new request's live row")
    first = await page.evaluate("document.querySelector('#live tbody tr').textContent")
    assert "claude-haiku-4-5" in first

    await page.screenshot(tmp_path / "dashboard.png")
    png = (tmp_path / "dashboard.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


async def test_dashboard_asks_for_a_key(start_serve: Callable[..., Proc], page: Page) -> None:
    serve = start_serve(env={"SECURITY__AUTH_TOKEN": TOKEN})
    await page.goto(f"{serve.url}/dashboard")
    status = await page.until(f"{READY} === 'error' && document.getElementById('status').textContent", "the key prompt")
    assert status == "enter your client key"
