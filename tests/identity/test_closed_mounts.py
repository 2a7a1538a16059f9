"""Closed by the mount: a route under /api, /sdk, /permissions or /logs is refused to anonymous
callers because the ``ClosedMount`` it is in closes it, unless it is declared ``public(...)``.
In process (Starlette TestClient), with the key backend of test_identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient

from ccproxy_core.errors import ProxyError
from ccproxy_core.identity import GUARDED_PREFIXES, ClosedMount, KeyBackend, caller_middleware, public
from ccproxy_core.settings import Settings
from tests.identity.test_identity import MEMBER, Keys, member_key, whoami


async def on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return PlainTextResponse(exc.message, status_code=exc.status)


def app_with(routes: list[BaseRoute]) -> TestClient:
    backend = KeyBackend(None, Keys((MEMBER, member_key())))
    app = Starlette(routes=routes, middleware=[caller_middleware(backend)], exception_handlers={ProxyError: on_error})
    return TestClient(app)


def test_the_mount_closes_what_it_holds_and_public_opens_a_route() -> None:
    mount = ClosedMount("/logs", [Route("/logs/new", whoami), public(Route("/logs/open", whoami)),
                                  Route("/logs/post-only", whoami, methods=["POST"])])
    client = app_with([Route("/health", whoami), mount])
    assert client.get("/logs/new").status_code == 401
    assert client.get("/logs/new", headers={"x-api-key": MEMBER}).json()["id"] == "k_ann"
    assert client.get("/logs/open").status_code == 200
    assert client.get("/health").status_code == 200  # outside every mount: open
    # The wrong method is still a 405 (the route's own answer), and no route a 404, not a 401.
    assert client.get("/logs/post-only").status_code == 405
    assert client.get("/logs/nothing-here").status_code == 404


def test_a_route_outside_its_mount_is_refused_when_the_app_is_built() -> None:
    with pytest.raises(ValueError, match="not under the mount"):
        ClosedMount("/sdk", [Route("/apix/v1/messages", whoami)])


def under_closed_prefix(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in GUARDED_PREFIXES)


def test_serve_has_no_route_under_a_closed_prefix_outside_its_mount(tmp_path: Path) -> None:
    """The whole of `ccproxy serve`: every route under /api, /sdk, /permissions and /logs is in
    a ClosedMount, so none is open by having been forgotten."""
    from ccproxy_app.local import build_local_app

    app = build_local_app(Settings(data_dir=tmp_path))
    loose = [getattr(r, "path", None) for r in app.routes
             if not isinstance(r, ClosedMount) and under_closed_prefix(str(getattr(r, "path", "")))]
    assert loose == []
    held = [r for m in app.routes if isinstance(m, ClosedMount) for r in m.routes]
    assert {m.prefix for m in app.routes if isinstance(m, ClosedMount)} == set(GUARDED_PREFIXES)
    assert len(held) > 20  # the API, SDK, permissions and log routes are all in there
