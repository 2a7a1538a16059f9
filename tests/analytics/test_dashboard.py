"""``/dashboard`` in headless Chromium: the page loads over ``ccproxy serve``, draws its charts
with data (uPlot canvases with pixels on them), lists usage, and shows a new request live."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from tests.analytics.browser import Browser, chromium_path
from tests.support.process import Proc, wait_until

TOKEN = "cc-test-token-dashboard-012345"
pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium missing: run scripts/setup-test-deps.sh")

CHARTS = """JSON.stringify([...document.querySelectorAll('.chart')].map(el => {
  const canvas = el.querySelector('canvas');
  let painted = 0;
  if (canvas) {
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
  }
  return {id: el.id, series: +el.dataset.series, points: +el.dataset.points, painted};
}))"""


async def test_dashboard_draws_charts_with_data(start_serve: Callable[..., Proc], tmp_path: Path) -> None:
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

    page = httpx.get(serve.url + "/dashboard")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    assert httpx.get(serve.url + "/dashboard/static/vendor/uplot/uPlot.iife.min.js").status_code == 200

    browser = Browser(tmp_path / "chromium")
    try:
        # The key travels in the fragment: the page keeps it and never sends it in a URL.
        await browser.open(f"{serve.url}/dashboard#key={TOKEN}")
        ready = await browser.wait_for("document.body.dataset.ready !== '0' && document.body.dataset.ready")
        assert ready == "1", await browser.evaluate("document.getElementById('status').textContent")
        await browser.wait_for("+document.getElementById('live').dataset.rows === 5")
        charts: list[dict[str, Any]] = __import__("json").loads(await browser.evaluate(CHARTS))
        by_id = {c["id"]: c for c in charts}
        assert set(by_id) == {"chart-requests", "chart-cost", "chart-tokens", "chart-latency"}
        for chart in charts:
            assert chart["points"] > 0 and chart["painted"] > 500, chart  # drawn, with data
        assert by_id["chart-cost"]["series"] == 2  # one line per model
        assert by_id["chart-requests"]["series"] == 2  # requests and errors
        assert await browser.evaluate("document.getElementById('total-requests').textContent") == "5"
        assert await browser.evaluate("document.getElementById('total-errors').textContent") == "1"
        usage_rows = await browser.evaluate("document.querySelectorAll('#usage tbody tr').length")
        assert usage_rows == 2  # key x model
        assert "api_error" in await browser.evaluate("document.getElementById('errors').textContent")
        assert TOKEN not in await browser.evaluate("location.href")

        # A new request appears in the live table without a reload.
        client.messages.create(model="claude-haiku-4-5", max_tokens=30, messages=[{"role": "user", "content": "live"}])
        await browser.wait_for("+document.getElementById('live').dataset.rows === 6")
        first = await browser.evaluate("document.querySelector('#live tbody tr').textContent")
        assert "claude-haiku-4-5" in first

        png = await browser.screenshot()
        (tmp_path / "dashboard.png").write_bytes(png)
        assert png.startswith(b"\x89PNG") and len(png) > 20_000
    finally:
        await browser.close()


async def test_dashboard_asks_for_a_key(start_serve: Callable[..., Proc], tmp_path: Path) -> None:
    serve = start_serve(env={"SECURITY__AUTH_TOKEN": TOKEN})
    browser = Browser(tmp_path / "chromium")
    try:
        await browser.open(f"{serve.url}/dashboard")
        assert await browser.wait_for("document.body.dataset.ready === 'error' && "
                                      "document.getElementById('status').textContent") == "enter your client key"
    finally:
        await browser.close()
