"""``/dashboard``: a page over the log API for ``ccproxy serve`` (no Grafana there). Static files
only (uPlot vendored), nothing to build; it reads ``/logs/*`` with the key the user types.
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
