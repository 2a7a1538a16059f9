"""Fixtures of the stack tests: the stack as separate OS processes behind real Traefik, with the
real Redis (127.0.0.1:6379, a key prefix of each stack's own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake import FakeUpstream
from tests.support.serve import UNKNOWN_KEY, UNKNOWN_VALUE, write_credentials
from tests.support.stack import StackProc, launch_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[StackProc]:
    """One stack per module, fresh subscription credentials, no client auth."""
    tmp = tmp_path_factory.mktemp("stack")
    config_dir = tmp / "claude"
    write_credentials(config_dir, fake_upstream.credentials(), extra={UNKNOWN_KEY: UNKNOWN_VALUE})
    running = launch_stack(tmp / "run", fake_url=fake_upstream.url, claude_config_dir=config_dir)
    try:
        yield running
    finally:
        running.stop()


def config_dir_with(tmp: Path, oauth: dict[str, object]) -> Path:
    config_dir = tmp / "claude"
    write_credentials(config_dir, oauth, extra={UNKNOWN_KEY: UNKNOWN_VALUE})
    return config_dir
