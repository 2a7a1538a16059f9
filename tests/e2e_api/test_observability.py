"""Models listings for both SDKs, /api/models, /api/status, /health and /metrics."""

from __future__ import annotations

import re

import anthropic
import httpx2 as httpx
import openai

from tests.e2e_api.conftest import CLIENT_KEY, MODEL, ApiServer


def test_models_list_with_anthropic_sdk(api: ApiServer) -> None:
    models = list(api.client().models.list())
    ids = [m.id for m in models]
    assert "claude-sonnet-4-5-20250929" in ids and len(ids) == len(set(ids))
    assert all(m.type == "model" and m.display_name and m.created_at for m in models)


def test_models_list_with_openai_sdk(api: ApiServer) -> None:
    client = openai.OpenAI(base_url=api.url + "/api/v1", api_key=CLIENT_KEY, max_retries=0)
    models = list(client.models.list())
    assert "claude-sonnet-4-5-20250929" in [m.id for m in models]
    assert all(m.object == "model" and m.owned_by and isinstance(m.created, int) for m in models)


def test_api_models_route(api: ApiServer) -> None:
    body = httpx.get(api.url + "/api/models").json()
    assert {"claude-opus-4-5-20251101", "claude-haiku-4-5-20251001"} <= {m["id"] for m in body["data"]}


def test_api_status(api: ApiServer) -> None:
    resp = httpx.get(api.url + "/api/status")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["mode"] == "api"
    assert body["credentials"]["available"] is True and body["credentials"]["kind"] == "oauth"
    assert body["credentials"]["subscription_type"] == "max"
    assert api.access_token not in resp.text and api.oauth["refreshToken"] not in resp.text


def test_health(api: ApiServer) -> None:
    body = httpx.get(api.url + "/health").json()
    assert body["status"] == "ok" and body["ready"] is True
    assert body["checks"]["credentials"]["available"] is True


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def test_metrics(api: ApiServer) -> None:
    before = httpx.get(api.url + "/metrics").text
    client = api.client()
    client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "count me"}])
    with client.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "me too"}]) as s:
        s.get_final_message()
    try:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "[[fake:error=500]]"}])
    except anthropic.InternalServerError:
        pass
    resp = httpx.get(api.url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    after = resp.text
    route = "/api/v1/messages"

    def grew(name: str, by: float, **labels: str) -> None:
        delta = metric(after, name, **labels) - metric(before, name, **labels)
        assert delta >= by, f"{name}{labels} grew by {delta}, expected {by}"

    grew("ccproxy_requests_total", 2, route=route, status="200")
    grew("ccproxy_requests_total", 1, route=route, status="500")
    grew("ccproxy_request_duration_seconds_count", 2, route=route)
    grew("ccproxy_time_to_first_byte_seconds_count", 2, route=route)
    grew("ccproxy_upstream_responses_total", 2, status="200")
    grew("ccproxy_upstream_responses_total", 1, status="500")
    grew("ccproxy_tokens_total", 2, model=MODEL, kind="input")
    grew("ccproxy_tokens_total", 2, model=MODEL, kind="output")
    assert api.access_token not in after and CLIENT_KEY not in after
