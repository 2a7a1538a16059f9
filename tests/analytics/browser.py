"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

Enough to test a page as a person sees it: open a URL, evaluate JavaScript in it, wait for a
condition, take a screenshot. One browser process per :class:`Browser`, its own profile dir.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.browser import CHROMIUM_FLAGS, chromium_path
from tests.support.ports import free_port


class Browser:
    def __init__(self, profile: Path, width: int = 1400, height: int = 1700) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed (scripts/setup-test-deps.sh installs it)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--remote-debugging-port={self.port}", "--remote-allow-origins=*",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def _targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as resp:
            targets: list[dict[str, Any]] = json.loads(resp.read())
            return targets

    async def open(self, url: str) -> None:
        deadline = time.monotonic() + 20
        page: dict[str, Any] | None = None
        while page is None:
            try:
                page = next((t for t in self._targets() if t.get("type") == "page"), None)
            except OSError:
                page = None
            if page is None:
                assert time.monotonic() < deadline, "chromium did not start"
                await asyncio.sleep(0.1)
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = await asyncio.wait_for(self._ws.receive(), 30)
            data = json.loads(msg.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float = 20.0) -> Any:
        """Poll ``expression`` until truthy (errors while the page loads count as not yet)."""
        deadline = time.monotonic() + within
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page condition not met within {within}s: {expression} ({value!r})")
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        """The whole page as PNG bytes."""
        result = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and its renderers
        self.proc.wait(10)
