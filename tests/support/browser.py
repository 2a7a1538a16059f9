"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

No browser driver package: the protocol is JSON over a WebSocket, which aiohttp speaks, and a
few calls (navigate, evaluate, screenshot) are all these tests need.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.ports import free_port

#: How every test starts Chromium: headless, as root, and quiet on a closed network (without the
#: background-networking flags it keeps dialling Google's hosts, each refused).
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.console: list[str] = []

    async def _read(self) -> None:
        async for message in self._ws:
            data = message.json()
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 15)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && location.href === " + repr(url), "the page load")

    async def until(self, expression: str, what: str, within: float = 10.0) -> Any:
        """Poll a JavaScript expression until it is truthy."""
        deadline = time.monotonic() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what} ({expression}); console: {self.console}")
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        await self._ws.close()


class Browser:
    def __init__(self, executable: str, profile: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                executable, *CHROMIUM_FLAGS, f"--remote-debugging-port={self.port}",
                f"--user-data-dir={profile}", "--window-size=1100,900", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.session = aiohttp.ClientSession()

    async def new_page(self) -> Page:
        deadline = time.monotonic() + 20
        while True:
            try:
                async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as resp:
                    target = await resp.json(content_type=None)
                    break
            except aiohttp.ClientError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        return page

    async def close(self) -> None:
        await self.session.close()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
