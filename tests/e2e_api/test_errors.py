"""Upstream errors reach the client with their status, body and retry-after, streamed or not."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx2 as httpx
import pytest

from tests.e2e_api.conftest import CLIENT_KEY, MODEL, ApiServer, start_api_server
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until

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


@pytest.fixture(scope="module")
def errs(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, deployment: str
         ) -> Iterator[ApiServer]:
    """A server whose account pool neither waits on a 429 nor cools down long after a 529, so
    each error reaches the client as the upstream sent it and the next test starts clean."""
    server = start_api_server(tmp_path_factory.mktemp("errs"), fake_upstream, env={
        "AUTH__THROTTLE_WAIT_SECONDS": "0", "AUTH__OVERLOAD_COOLDOWN_SECONDS": "0"}, deployment=deployment)
    try:
        yield server
    finally:
        server.proc.stop()


def recovered(server: ApiServer) -> None:
    """After a 429 the account cools down for retry-after (1 s): wait until it serves again."""
    wait_until(
        lambda: httpx.post(server.url + "/api/v1/messages", headers=HEADERS, timeout=30, json={
            "model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "ok?"}]}).status_code == 200,
        timeout=10, interval=0.2, message="the account's cooldown to end",
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_upstream_error_relayed(errs: ApiServer, status: int, stream: bool) -> None:
    resp = httpx.post(errs.url + "/api/v1/messages", headers=HEADERS, timeout=30, json={
        "model": MODEL, "max_tokens": 10, "stream": stream,
        "messages": [{"role": "user", "content": f"fail [[fake:error={status}]] [[fake:retry_after=1]]"}],
    })
    assert resp.status_code == status
    body = resp.json()
    request_id = resp.headers["request-id"]
    # The upstream's own body, untouched (it carries the upstream's request_id).
    assert body == {
        "type": "error", "error": {"type": EXPECTED[status][0], "message": body["error"]["message"]},
        "request_id": request_id,
    }
    assert errs.upstream(request_id)["status"] == status
    assert resp.headers["anthropic-ratelimit-unified-status"] == "allowed"
    if status == 429:
        assert resp.headers["retry-after"] == "1"
        recovered(errs)


def test_spent_quota_relayed(errs: ApiServer) -> None:
    resp = httpx.post(errs.url + "/api/v1/messages", headers=HEADERS, timeout=30, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "[[fake:quota=seven_day:1]]"}]})
    assert resp.status_code == 429 and resp.json()["error"]["type"] == "rate_limit_error"
    assert resp.headers["anthropic-ratelimit-unified-status"] == "rejected"
    assert resp.headers["anthropic-ratelimit-unified-representative-claim"] == "seven_day"
    assert resp.headers["retry-after"] == "1"
    recovered(errs)


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_sdk_sees_upstream_error(errs: ApiServer, status: int) -> None:
    error_type, exc_class = EXPECTED[status]
    with pytest.raises(exc_class) as caught:
        errs.client().messages.create(
            model=MODEL, max_tokens=10,
            messages=[{"role": "user", "content": f"x [[fake:error={status}]] [[fake:retry_after=1]]"}])
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type  # type: ignore[index]
    if status == 429:
        recovered(errs)


def test_rate_limit_headers_relayed_on_success(api: ApiServer) -> None:
    resp = httpx.post(api.url + "/api/v1/messages", headers=HEADERS, timeout=30, json={
        "model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    assert resp.headers["anthropic-ratelimit-unified-status"] == "allowed"
    assert float(resp.headers["anthropic-ratelimit-unified-5h-utilization"]) > 0
