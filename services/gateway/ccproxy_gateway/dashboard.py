"""``/dashboard``: a page for users of ``ccproxy serve`` (who have no Grafana) over the log API.

Static files only (HTML, JS, and uPlot vendored under ``static/vendor``), so there is nothing to
build; the page reads ``/logs/*`` with the client key the user types (kept in the browser).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", headers={"cache-control": "no-cache"})


def dashboard_routes() -> list[BaseRoute]:
    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/", page, methods=["GET"]),
        Mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static"),
    ]
