"""``ccproxy permission-handler``: approve tool uses from a terminal.

Follows ``/permissions/stream`` (reconnecting when the connection drops; the server replays what
is still pending), shows one request at a time and reads y / n / e. A request decided elsewhere
meanwhile (web page, another handler, the timeout) is dropped from the prompt at once. Standard
input is read by a thread, so a blocked read never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections import defaultdict
from typing import Any, TextIO

import aiohttp
import orjson

from ccproxy_core.permissions import PermissionView
from ccproxy_core.sse import iter_events

PROMPT = "Allow? [y]es / [n]o / [e]dit input: "


class Unauthorized(Exception):
    pass


class TerminalHandler:
    def __init__(self, url: str, key: str | None, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> None:
        self.url = url.rstrip("/")
        self.headers = {"x-api-key": key} if key else {}
        self.out = out
        self.stdin = stdin
        self.pending: dict[str, PermissionView] = {}
        #: Set once a request is decided (by us or elsewhere): its prompt stops waiting for a line.
        self.finished: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.arrived = asyncio.Event()
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _start_reader(self) -> None:
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in self.stdin:
                loop.call_soon_threadsafe(self.lines.put_nowait, line.rstrip("\r\n"))
            loop.call_soon_threadsafe(self.lines.put_nowait, None)

        threading.Thread(target=read, name="permission-handler-stdin", daemon=True).start()

    def _drain(self) -> None:
        """Forget what was typed before this prompt (it answered nothing)."""
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                if self.lines.get_nowait() is None:
                    self.lines.put_nowait(None)
                    return

    async def _line_unless(self, event: asyncio.Event, question: str = "") -> str | bool | None:
        """The next line after asking ``question`` (None at end of input), or False when ``event`` is set first."""
        self.out.write(question)
        self.out.flush()
        line = asyncio.ensure_future(self.lines.get())
        other = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({line, other}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            other.cancel()
        if line.done():
            return line.result()
        line.cancel()
        return False

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        view = PermissionView.model_validate(data)
        if event == "permission_request" and view.status == "pending":
            if view.id not in self.pending and not self.finished[view.id].is_set():
                self.pending[view.id] = view
                self.arrived.set()
        elif event in ("permission_resolved", "permission_expired"):
            was_waiting = self.pending.pop(view.id, None) is not None
            self.finished[view.id].set()
            if was_waiting and view.decision is not None:
                by = f" by {view.decision.decided_by}" if view.decision.decided_by else ""
                self.say(f"\n[{view.id}] {view.tool_name}: {view.status}{by}")

    async def follow(self, session: aiohttp.ClientSession) -> None:
        """Follow the stream for ever, reconnecting with a growing pause (at most 10 s)."""
        pause = 0.5
        connected_once = False
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=90)
        while True:
            try:
                async with session.get(f"{self.url}/permissions/stream", headers=self.headers, timeout=timeout) as resp:
                    if resp.status == 401:
                        raise Unauthorized((await resp.text())[:300])
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status, message=(await resp.text())[:200]
                        )
                    again = " again" if connected_once else ""
                    self.say(f"connected to {self.url}{again}; waiting for permission requests (Ctrl-D to quit)")
                    if connected_once:
                        await self._reconcile(session)
                    connected_once, pause = True, 0.5
                    async for sse in iter_events(resp.content.iter_any()):
                        if sse.event.startswith("permission_"):
                            self._on_event(sse.event, orjson.loads(sse.data))
                self.say("the server closed the stream; reconnecting")
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                self.say(f"connection lost ({type(exc).__name__}); reconnecting in {pause:g} s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)

    async def _reconcile(self, session: aiohttp.ClientSession) -> None:
        """After a reconnect, drop what was decided while we were away (its event is gone)."""
        timeout = aiohttp.ClientTimeout(total=15)
        async with session.get(f"{self.url}/permissions", headers=self.headers, timeout=timeout) as resp:
            if resp.status != 200:
                return
            still = {item["id"] for item in orjson.loads(await resp.read())["data"]}
        for request_id in [i for i in self.pending if i not in still]:
            self.pending.pop(request_id)
            self.finished[request_id].set()
            self.say(f"\n[{request_id}] was decided while the connection was down")

    def show(self, view: PermissionView) -> None:
        self.say(f"\n── permission request {view.id} " + "─" * 20)
        if view.title:
            self.say(view.title)
        self.say(f"tool:     {view.tool_name}")
        self.say(f"asked by: {view.key_name}")
        self.say("input:")
        self.say(orjson.dumps(view.input, option=orjson.OPT_INDENT_2).decode())
        self.say(f"(denied automatically in {max(0, round(view.expires_at - time.time()))} s)")

    async def decide(self, session: aiohttp.ClientSession, view: PermissionView, body: dict[str, Any]) -> None:
        """Send the decision. When it could not be sent the request is dropped from the prompt;
        the stream replays it after the reconnect if it is still pending."""
        # Our own decision's event must not be reported as "decided elsewhere".
        self.pending.pop(view.id, None)
        url = f"{self.url}/permissions/{view.id}/respond"
        timeout = aiohttp.ClientTimeout(total=15)
        try:
            async with session.post(url, json=body, headers=self.headers, timeout=timeout) as resp:
                data = orjson.loads(await resp.read() or b"{}")
                if resp.status == 200:
                    self.say(f"→ {data.get('status')}")
                elif resp.status in (404, 409):
                    self.say(f"→ already decided elsewhere ({(data.get('permission') or {}).get('status', 'gone')})")
                else:
                    self.say(f"→ not recorded: {data.get('error', {}).get('message', resp.status)}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.say(f"→ not recorded ({type(exc).__name__}); it is asked again when the connection is back")

    async def prompt(self, session: aiohttp.ClientSession) -> None:
        while True:
            if not self.pending:
                self.arrived.clear()
                line = await self._line_unless(self.arrived)
                if line is None:
                    return
                if line is not False:
                    self.say("nothing is waiting for an answer")
                continue
            view = next(iter(self.pending.values()))
            self.show(view)
            self._drain()
            body: dict[str, Any] | None = None
            while body is None:
                answer = await self._line_unless(self.finished[view.id], PROMPT)
                if answer is None:
                    return
                if answer is False:  # decided elsewhere (already reported)
                    break
                choice = str(answer).strip().lower()
                if choice in ("y", "yes"):
                    body = {"behavior": "allow"}
                elif choice in ("n", "no"):
                    body = {"behavior": "deny"}
                elif choice in ("e", "edit"):
                    edited = await self.edit(view)
                    if edited is None:
                        return
                    if edited is not False:
                        body = {"behavior": "allow", "updated_input": edited}
                else:
                    self.say("please answer y, n or e")
            if body is not None:
                await self.decide(session, view, body)
            self.pending.pop(view.id, None)

    async def edit(self, view: PermissionView) -> dict[str, Any] | bool | None:
        """The edited input (a JSON object on one line), False to go back, None at end of input."""
        while True:
            answer = await self._line_unless(self.finished[view.id], "new input as JSON on one line (empty: back): ")
            if answer is None or answer is False:
                return answer
            if not str(answer).strip():
                return False
            try:
                value = orjson.loads(str(answer).strip())
            except orjson.JSONDecodeError as exc:
                self.say(f"not valid JSON ({exc}); try again")
                continue
            if isinstance(value, dict):
                return value
            self.say("the input must be a JSON object; try again")

    async def run(self) -> int:
        self._start_reader()
        async with aiohttp.ClientSession() as session:
            follower = asyncio.ensure_future(self.follow(session))
            prompter = asyncio.ensure_future(self.prompt(session))
            await asyncio.wait({follower, prompter}, return_when=asyncio.FIRST_COMPLETED)
            refused = follower.done() and not follower.cancelled() and follower.exception()
            for task in (follower, prompter):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Unauthorized):
                    await task
            if isinstance(refused, Unauthorized):
                self.say(f"the server refused the key: {refused}")
                return 2
            if refused:
                raise refused
        return 0


def run(url: str, key: str | None) -> int:
    return asyncio.run(TerminalHandler(url, key).run())
