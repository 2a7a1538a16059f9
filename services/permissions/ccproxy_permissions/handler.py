"""``ccproxy permission-handler``: follows ``/permissions/stream`` (the server replays what is pending
on a reconnect) and asks y / n / e for one request at a time. Typed lines (a thread reads them) and
events share one inbox in arrival order, so a request decided elsewhere leaves the prompt at once
and a line typed before a request arrived answers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from typing import Annotated, Any, Literal

import aiohttp
import orjson
import typer

from ccproxy_core.cli import load_settings
from ccproxy_core.permissions import PermissionView
from ccproxy_core.sse import iter_events

PROMPT = "Allow? [y]es / [n]o / [e]dit input: "
EDIT_PROMPT = "new input as JSON on one line (empty: back): "
#: ``line`` (text), ``eof``, ``event`` ((name, data) from the stream), ``gone`` (an id decided while offline).
Inbox = asyncio.Queue[tuple[Literal["line", "eof", "event", "gone"], Any]]


class Unauthorized(Exception):
    pass


class TerminalHandler:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"x-api-key": key} if key else {}
        self.inbox: Inbox = asyncio.Queue()
        #: Waiting for an answer, in arrival order; the first is the one shown.
        self.pending: dict[str, PermissionView] = {}
        #: Decided (by us or elsewhere): a replay of one of these is not asked again.
        self.finished: set[str] = set()
        self.shown: str | None = None
        self.editing = False

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def _start_reader(self) -> None:
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(self.inbox.put_nowait, ("line", line.rstrip("\r\n")))
            loop.call_soon_threadsafe(self.inbox.put_nowait, ("eof", None))

        threading.Thread(target=read, name="permission-handler-stdin", daemon=True).start()

    async def follow(self, session: aiohttp.ClientSession) -> None:
        pause = 0.5
        connected_once = False
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=90)
        while True:
            try:
                async with session.get(f"{self.url}/permissions/stream", headers=self.headers, timeout=timeout) as resp:
                    if resp.status == 401:
                        raise Unauthorized((await resp.text())[:300])
                    resp.raise_for_status()
                    again = " again" if connected_once else ""
                    self.say(f"connected to {self.url}{again}; waiting for permission requests (Ctrl-D to quit)")
                    if connected_once:
                        await self._reconcile(session)
                    connected_once, pause = True, 0.5
                    async for sse in iter_events(resp.content.iter_any()):
                        if sse.event.startswith("permission_"):
                            self.inbox.put_nowait(("event", (sse.event, orjson.loads(sse.data))))
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
            self.inbox.put_nowait(("gone", request_id))

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        view = PermissionView.model_validate(data)
        if event == "permission_request" and view.status == "pending":
            if view.id not in self.finished:
                self.pending.setdefault(view.id, view)
        elif event in ("permission_resolved", "permission_expired"):
            self.finished.add(view.id)
            if self.pending.pop(view.id, None) is not None and view.decision is not None:
                by = f" by {view.decision.decided_by}" if view.decision.decided_by else ""
                self.say(f"\n[{view.id}] {view.tool_name}: {view.status}{by}")

    def show(self, view: PermissionView) -> None:
        self.say(f"\n── permission request {view.id} " + "─" * 20)
        if view.title:
            self.say(view.title)
        self.say(f"tool:     {view.tool_name}")
        self.say(f"asked by: {view.key_name}")
        self.say("input:")
        self.say(orjson.dumps(view.input, option=orjson.OPT_INDENT_2).decode())
        self.say(f"(denied automatically in {max(0, round(view.expires_at - time.time()))} s)")

    def ask(self) -> None:
        print(EDIT_PROMPT if self.editing else PROMPT, end="", flush=True)

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

    def _answer(self, line: str) -> dict[str, Any] | None:
        """The decision ``line`` makes for the request shown, or None (asked again, or editing)."""
        text = line.strip()
        if self.editing:
            if not text:
                self.editing = False
                return None
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                self.say(f"not valid JSON ({exc}); try again")
                return None
            if isinstance(value, dict):
                return {"behavior": "allow", "updated_input": value}
            self.say("the input must be a JSON object; try again")
            return None
        choice = text.lower()
        if choice in ("y", "yes", "n", "no"):
            return {"behavior": "allow" if choice.startswith("y") else "deny"}
        if choice in ("e", "edit"):
            self.editing = True
        else:
            self.say("please answer y, n or e")
        return None

    async def prompt(self, session: aiohttp.ClientSession) -> None:
        while True:
            if self.shown not in self.pending:  # answered, or decided elsewhere: the next one
                self.shown, self.editing = next(iter(self.pending), None), False
                if self.shown is not None:
                    self.show(self.pending[self.shown])
                    self.ask()
            kind, value = await self.inbox.get()
            if kind == "eof":
                return
            if kind == "event":
                self._on_event(*value)
            elif kind == "gone":
                if self.pending.pop(value, None) is not None:
                    self.finished.add(value)
                    self.say(f"\n[{value}] was decided while the connection was down")
            elif self.shown is None:
                self.say("nothing is waiting for an answer")
            else:
                body = self._answer(value)
                if body is None:
                    self.ask()
                else:
                    await self.decide(session, self.pending[self.shown], body)

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


def permission_handler(
    url: Annotated[
        str | None, typer.Option(help="ccproxy's address (default: http://SERVER__HOST:SERVER__PORT).")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(envvar="CCPROXY_API_KEY", help="Your client key (default: SECURITY__AUTH_TOKEN)."),
    ] = None,
) -> None:
    """Approve or deny Claude Code's tool uses (SDK mode) from this terminal: y / n / e(dit)."""
    settings = load_settings()
    if url is None:
        url = f"http://{settings.server.host}:{settings.server.port}"
    if key is None and settings.security.auth_token is not None:
        key = settings.security.auth_token.get_secret_value()
    try:
        code = asyncio.run(TerminalHandler(url, key).run())
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """The ``ccproxy.commands`` entry point."""
    app.command("permission-handler")(permission_handler)
