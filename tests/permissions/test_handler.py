"""``ccproxy permission-handler`` driven through a pseudo-terminal, as a person would use it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.permissions.clients import ask, client, gate, pending_ids, poll, respond
from tests.permissions.conftest import ADMIN_TOKEN, StartPermissions
from tests.support.serve import CCPROXY, isolated_env

pytestmark = pytest.mark.timeout(120)


class Terminal:
    """pexpect's blocking calls, run off the event loop so the test's own HTTP keeps going."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child

    async def expect(self, pattern: str, within: float = 15) -> str:
        await asyncio.to_thread(self.child.expect, pattern, timeout=within)
        return str(self.child.after)

    async def line(self, text: str) -> None:
        await asyncio.to_thread(self.child.sendline, text)


def spawn(tmp_path: Path, url: str, key: str) -> Terminal:
    env: dict[str, Any] = isolated_env(tmp_path / "handler")
    child = pexpect.spawn(
        str(CCPROXY), ["permission-handler", "--url", url, "--key", key],
        env=env, encoding="utf-8", timeout=15, dimensions=(50, 200),
    )
    child.logfile_read = (tmp_path / "handler.log").open("w")
    return Terminal(child)


async def test_approve_deny_and_edit_from_a_terminal_that_reconnects(
    permissions: StartPermissions, tmp_path: Path
) -> None:
    a = permissions()
    worker = gate(a.url)
    term = spawn(tmp_path, a.url, ADMIN_TOKEN)
    try:
        await term.expect("waiting for permission requests")

        # y: allowed as asked. The terminal shows the tool, who asked and the full input.
        first = asyncio.create_task(worker.ask(ask("Write", file_path="notes/a.txt", content="hello")))
        await term.expect("tool: +Write")
        await term.expect("asked by: admin")
        await term.expect('"content": "hello"')
        await term.expect(re.escape("Allow? [y]es / [n]o / [e]dit input:"))
        await term.line("y")
        await term.expect("→ allowed")
        view = await asyncio.wait_for(first, 10)
        assert view.status == "allowed" and view.decision is not None
        assert view.decision.updated_input is None

        # n: denied, and Claude is told so.
        second = asyncio.create_task(worker.ask(ask("Bash", command="make deploy")))
        await term.expect('"command": "make deploy"')
        await term.expect(re.escape("[e]dit input:"))
        await term.line("n")
        await term.expect("→ denied")
        view = await asyncio.wait_for(second, 10)
        assert view.status == "denied" and view.decision is not None
        assert "denied permission to use Bash" in (view.decision.message or "")

        # e: a bad edit is refused, a good one runs instead of the original input.
        third = asyncio.create_task(worker.ask(ask("Write", file_path="notes/b.txt", content="draft")))
        await term.expect('"content": "draft"')
        await term.expect(re.escape("[e]dit input:"))
        await term.line("e")
        await term.expect("new input as JSON")
        await term.line("{not json")
        await term.expect("not valid JSON")
        await term.expect("new input as JSON")
        await term.line('{"file_path": "notes/b.txt", "content": "final"}')
        await term.expect("→ allowed")
        view = await asyncio.wait_for(third, 10)
        assert view.decision is not None
        assert view.decision.updated_input == {"file_path": "notes/b.txt", "content": "final"}

        # Decided elsewhere while the terminal asks: the prompt moves on by itself.
        async with client() as session:
            fourth = asyncio.create_task(worker.ask(ask("Read", file_path="notes/c.txt")))
            await term.expect('"file_path": "notes/c.txt"')
            request_id = (await poll(lambda: pending_ids(session, a.url)))[0]
            status, _ = await respond(session, a.url, request_id, {"behavior": "allow"})
            assert status == 200
            await term.expect(re.escape(f"[{request_id}] Read: allowed by admin"))
            assert (await asyncio.wait_for(fourth, 10)).status == "allowed"

        # The service goes away and comes back: the terminal reconnects and sees what is pending.
        a.kill()
        await term.expect("connection lost")
        restarted = permissions(port=a.port)
        await term.expect("connected to .* again", within=20)
        other = gate(restarted.url)
        fifth = asyncio.create_task(other.ask(ask("Write", file_path="notes/after.txt")))
        await term.expect('"file_path": "notes/after.txt"')
        await term.expect(re.escape("[e]dit input:"))
        await term.line("y")
        await term.expect("→ allowed")
        assert (await asyncio.wait_for(fifth, 10)).status == "allowed"
        await other.aclose()

        term.child.sendeof()
        await asyncio.to_thread(term.child.expect, pexpect.EOF, timeout=10)
        term.child.close()
        assert term.child.exitstatus == 0
    finally:
        term.child.close(force=True)
        await worker.aclose()


async def test_a_refused_key_is_one_clear_line(permissions: StartPermissions, tmp_path: Path) -> None:
    a = permissions()
    term = spawn(tmp_path, a.url, "not-a-key")
    await term.expect("the server refused the key")
    await asyncio.to_thread(term.child.expect, pexpect.EOF, timeout=10)
    term.child.close()
    assert term.child.exitstatus == 2
