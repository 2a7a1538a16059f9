"""Fixtures of the accounts and keys tests: real Redis with a key prefix of the test's own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ccproxy_core.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> str:
    return f"test:{secrets.token_hex(6)}:"


@pytest.fixture
async def redis(prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def settings(tmp_path: Path, prefix: str) -> Settings:
    """Settings isolated from the machine: data dir in tmp, file secrets, our Redis prefix."""
    return Settings(
        data_dir=tmp_path / "data",
        redis={"url": REDIS_URL, "key_prefix": prefix},
        auth={"secret_backend": "file", "use_keyring": False, "claude_config_dir": tmp_path / "claude"},
    )
