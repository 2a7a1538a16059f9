"""Shared pieces of the API-mode end-to-end tests: one server per module for the tests that only
need a working server (starting one costs about a second).

Every such test runs twice, through the ``deployment`` fixture: against ``ccproxy serve`` (one
process) and against the stack (auth, api-forwarder and gateway as separate processes behind the
real Traefik, with the real Redis; tests/support/stack.py). A client must not tell them apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support.fake import FakeUpstream
from tests.support.process import Proc
from tests.support.serve import UNKNOWN_KEY, UNKNOWN_VALUE, launch_serve, write_credentials
from tests.support.stack import StackProc, launch_stack

MODEL = "claude-sonnet-4-6"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
#: What the SDK sends as its key when ccproxy has no client auth: must never reach the upstream.
CLIENT_KEY = "sk-ant-api03-client-key-that-must-not-leave-ccproxy"


#: Where the module-scoped servers run: one process, or the stack of processes behind Traefik.
DEPLOYMENTS = ["serve", "stack"]


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class ApiServer:
    proc: Proc | StackProc
    fake: FakeUpstream
    oauth: dict[str, Any]
    config_dir: Path

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def access_token(self) -> str:
        return str(self.oauth["accessToken"])

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        kwargs.setdefault("api_key", CLIENT_KEY)
        kwargs.setdefault("max_retries", 0)
        return anthropic.Anthropic(base_url=self.url + "/api", **kwargs)

    def async_client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        kwargs.setdefault("api_key", CLIENT_KEY)
        kwargs.setdefault("max_retries", 0)
        return anthropic.AsyncAnthropic(base_url=self.url + "/api", **kwargs)

    def upstream(self, request_id: str | None) -> dict[str, Any]:
        """What the fake received for the answer with this ``request-id``."""
        assert request_id, "ccproxy did not relay the upstream's request-id header"
        return self.fake.request(request_id)


def start_api_server(tmp: Path, fake: FakeUpstream, env: dict[str, str | None] | None = None,
                     deployment: str = "serve", **cred_options: Any) -> ApiServer:
    oauth = fake.credentials(**cred_options)
    config_dir = tmp / "claude"
    write_credentials(config_dir, oauth, extra={UNKNOWN_KEY: UNKNOWN_VALUE})
    proc: Proc | StackProc
    if deployment == "stack":
        proc = launch_stack(tmp / "stack", fake_url=fake.url, claude_config_dir=config_dir, env=env)
    else:
        proc = launch_serve(tmp / "serve", fake_url=fake.url, claude_config_dir=config_dir, env=env)
    return ApiServer(proc, fake, oauth, config_dir)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, deployment: str
        ) -> Iterator[ApiServer]:
    """A server (``ccproxy serve``, or the stack) with fresh subscription credentials and no client auth."""
    server = start_api_server(tmp_path_factory.mktemp("api"), fake_upstream, deployment=deployment)
    try:
        yield server
    finally:
        server.proc.stop()
