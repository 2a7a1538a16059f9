"""``GET /api/v1/models`` and ``/sdk/v1/models`` ask the upstream (cached), and fall back to the
packaged list."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.e2e_api.conftest import CLIENT_KEY, ApiServer, start_api_server
from tests.support.fake import FakeUpstream

#: Listed by the fake upstream, absent from libs/core/ccproxy_core/data/models.json.
UPSTREAM_ONLY = "claude-fable-5-2"


def test_models_anthropic_sdk_lists_upstream_only_model(api: ApiServer) -> None:
    models = {m.id: m for m in api.client().models.list()}
    assert UPSTREAM_ONLY in models and models[UPSTREAM_ONLY].display_name == "Claude Fable 5.2"
    assert "gpt-4o" in models  # the configured OpenAI aliases stay listed


def test_models_openai_sdk_lists_upstream_only_model(api: ApiServer) -> None:
    client = openai.OpenAI(base_url=api.url + "/api/v1", api_key=CLIENT_KEY, max_retries=0)
    models = {m.id: m for m in client.models.list()}
    opus = models[UPSTREAM_ONLY]
    assert opus.object == "model" and opus.owned_by == "anthropic" and opus.created == 1795046400
    assert "gpt-4o" in models


def test_sdk_models_list_what_api_models_list(api: ApiServer) -> None:
    """SDK mode runs the models the upstream has, so it lists them too (not a stale table)."""
    sdk = anthropic.Anthropic(base_url=api.url + "/sdk", api_key=CLIENT_KEY, max_retries=0)
    listed = [(m.id, m.display_name) for m in sdk.models.list()]
    assert listed == [(m.id, m.display_name) for m in api.client().models.list()]
    assert (UPSTREAM_ONLY, "Claude Fable 5.2") in listed and any(i == "gpt-4o" for i, _ in listed)
    assert httpx.get(api.url + "/sdk/models").json() == httpx.get(api.url + "/api/models").json()


def test_models_cached_and_query_passed_through(api: ApiServer) -> None:
    def upstream_calls() -> list[dict[str, object]]:
        return api.fake.requests(path="/v1/models", token=api.access_token)

    before = len(upstream_calls())
    first = httpx.get(api.url + "/api/v1/models?limit=2")
    second = httpx.get(api.url + "/api/models?limit=2")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    body = first.json()
    assert body["has_more"] is True and body["data"][0]["id"] == UPSTREAM_ONLY
    assert len(body["data"]) == 2  # no aliases on a page that is not the last
    calls = upstream_calls()
    assert len(calls) == before + 1, "the second listing within the cache window asked the upstream again"
    assert calls[-1]["query"] == {"limit": "2"}


def _static_only(resp: httpx.Response) -> None:
    assert resp.status_code == 200
    ids = {m["id"] for m in resp.json()["data"]}
    assert "claude-sonnet-4-5-20250929" in ids and "gpt-4o" in ids and UPSTREAM_ONLY not in ids
    # The packaged list is current too: the models Claude Code and the SDKs use today.
    assert {"claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-sonnet-4-6"} <= ids


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, deployment: str
            ) -> Iterator[ApiServer]:
    """A server whose token the upstream refuses and cannot refresh: every upstream call is a 401."""
    server = start_api_server(tmp_path_factory.mktemp("refused"), fake_upstream, deployment=deployment,
                              revoked=True, refresh_valid=False)
    try:
        yield server
    finally:
        server.proc.stop()


def test_models_upstream_error_falls_back_to_static_list(refused: ApiServer) -> None:
    _static_only(httpx.get(refused.url + "/api/v1/models"))
    assert refused.fake.requests(path="/v1/models", token=refused.access_token), "the upstream was not asked"
    _static_only(httpx.get(refused.url + "/api/models"))
    _static_only(httpx.get(refused.url + "/sdk/v1/models"))


def test_models_upstream_down_falls_back_to_static_list(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, deployment: str
) -> None:
    if deployment != "serve":
        pytest.skip("one process is enough to show an unreachable upstream")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends: nothing listens
    server = start_api_server(tmp_path_factory.mktemp("down"), fake_upstream,
                              env={"ANTHROPIC__BASE_URL": dead})
    try:
        _static_only(httpx.get(server.url + "/api/v1/models"))
    finally:
        server.proc.stop()
