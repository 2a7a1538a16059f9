"""One ``ccproxy serve`` per test module, with the official ``openai`` SDK as its client."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.fake import FakeUpstream
from tests.support.process import Proc
from tests.support.serve import launch_serve, write_credentials

#: What the SDK sends as its key when ccproxy has no client auth: must never reach the upstream.
CLIENT_KEY = "sk-openai-client-key-that-must-not-leave-ccproxy"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."


@dataclass
class OpenAIServer:
    proc: Proc
    fake: FakeUpstream

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def base_url(self) -> str:
        return self.url + "/api/v1"

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", CLIENT_KEY)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        return openai.OpenAI(base_url=self.base_url, **kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("api_key", CLIENT_KEY)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        return openai.AsyncOpenAI(base_url=self.base_url, **kwargs)

    def upstream(self, request_id: str | None) -> dict[str, Any]:
        """What the fake received for the answer with this request id."""
        assert request_id, "ccproxy did not pass on the upstream's request id"
        return self.fake.request(request_id)


def start_openai_server(tmp: Path, fake: FakeUpstream, env: dict[str, str | None] | None = None) -> OpenAIServer:
    config_dir = tmp / "claude"
    write_credentials(config_dir, fake.credentials())
    return OpenAIServer(launch_serve(tmp / "serve", fake_url=fake.url, claude_config_dir=config_dir, env=env), fake)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[OpenAIServer]:
    srv = start_openai_server(tmp_path_factory.mktemp("openai"), fake_upstream)
    try:
        yield srv
    finally:
        srv.proc.stop()


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """A real PNG (the fake checks that image bytes match their media type)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
