"""Upstream errors reach the client with their status, body and retry-after, streamed or not."""

from __future__ import annotations

import anthropic
import httpx2 as httpx
import pytest

from tests.e2e_api.conftest import CLIENT_KEY, MODEL, ApiServer

HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
EXPECTED = {
    400: ("invalid_request_error", anthropic.BadRequestError),
    403: ("permission_error", anthropic.PermissionDeniedError),
    404: ("not_found_error", anthropic.NotFoundError),
    413: ("request_too_large", anthropic.APIStatusError),
    429: ("rate_limit_error", anthropic.RateLimitError),
    500: ("api_error", anthropic.InternalServerError),
    529: ("overloaded_error", anthropic.APIStatusError),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_upstream_error_relayed(api: ApiServer, status: int, stream: bool) -> None:
    resp = httpx.post(api.url + "/api/v1/messages", headers=HEADERS, timeout=30, json={
        "model": MODEL, "max_tokens": 10, "stream": stream,
        "messages": [{"role": "user", "content": f"fail [[fake:error={status}]] [[fake:retry_after=7]]"}],
    })
    assert resp.status_code == status
    body = resp.json()
    request_id = resp.headers["request-id"]
    # The upstream's own body, untouched (it carries the upstream's request_id).
    assert body == {
        "type": "error", "error": {"type": EXPECTED[status][0], "message": body["error"]["message"]},
        "request_id": request_id,
    }
    assert api.upstream(request_id)["status"] == status
    if status == 429:
        assert resp.headers["retry-after"] == "7"
        assert resp.headers["anthropic-ratelimit-unified-status"] == "rejected"


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_sdk_sees_upstream_error(api: ApiServer, status: int) -> None:
    error_type, exc_class = EXPECTED[status]
    with pytest.raises(exc_class) as caught:
        api.client().messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": f"x [[fake:error={status}]]"}])
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type  # type: ignore[index]


def test_rate_limit_headers_relayed_on_success(api: ApiServer) -> None:
    resp = httpx.post(api.url + "/api/v1/messages", headers=HEADERS, timeout=30, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    assert resp.headers["anthropic-ratelimit-unified-status"] == "allowed"
    assert float(resp.headers["anthropic-ratelimit-unified-5h-utilization"]) > 0
