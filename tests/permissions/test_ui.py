"""The approval page at ``/permissions/ui``, in headless Chromium, as a person would use it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.permissions.clients import ask, client, gate, pending_ids, poll, respond
from tests.permissions.conftest import ADMIN_TOKEN, StartPermissions
from tests.support.browser import Page

pytestmark = pytest.mark.timeout(120)


def card(request_id: str) -> str:
    return f"document.querySelector('.card[data-id={json.dumps(request_id)}]')"


async def test_approve_deny_and_edit_with_one_click(
    permissions: StartPermissions, page: Page, tmp_path: Path
) -> None:
    a = permissions()
    worker = gate(a.url)
    try:
        async with client() as session:
            # A request made before the page is opened is on it as soon as it connects.
            early = asyncio.create_task(worker.ask(ask("Write", file_path="notes/early.txt", content="one")))
            early_id = (await poll(lambda: pending_ids(session, a.url)))[0]

            await page.goto(f"{a.url}/permissions/ui")
            # Client auth is on: the page asks for a key before it shows anything.
            await page.until("document.querySelector('#login').classList.contains('show')", "the key form")
            assert await page.evaluate("document.querySelectorAll('.card').length") == 0
            await page.evaluate(
                f"document.querySelector('#key').value = {json.dumps(ADMIN_TOKEN)};"
                "document.querySelector('#login').requestSubmit()"
            )
            await page.until("document.querySelector('#status').textContent === 'connected'", "the stream")
            await page.until("!!" + card(early_id), "the early request's card")
            text = await page.evaluate(f"{card(early_id)}.innerText")
            assert "Write" in text and "asked by admin" in text and "notes/early.txt" in text
            await page.screenshot(tmp_path / "pending.png")

            await page.evaluate(f"{card(early_id)}.querySelector('button.allow').click()")
            view = await asyncio.wait_for(early, 10)
            assert view.status == "allowed" and view.decision is not None
            assert view.decision.updated_input is None
            await page.until(f"!{card(early_id)}", "the decided card to go")
            await page.until("document.querySelector('#log').innerText.includes('allowed by admin')", "the log line")

            # Deny.
            second = asyncio.create_task(worker.ask(ask("Bash", command="make deploy")))
            second_id = (await poll(lambda: pending_ids(session, a.url)))[0]
            await page.until("!!" + card(second_id), "the live request's card")
            await page.evaluate(f"{card(second_id)}.querySelector('button.deny').click()")
            view = await asyncio.wait_for(second, 10)
            assert view.status == "denied"

            # Edit the input, then approve: the edited input is what runs.
            third = asyncio.create_task(worker.ask(ask("Write", file_path="notes/c.txt", content="draft")))
            third_id = (await poll(lambda: pending_ids(session, a.url)))[0]
            await page.until("!!" + card(third_id), "the third card")
            edited = {"file_path": "notes/c.txt", "content": "final", "mode": [1, {"x": None}]}
            await page.evaluate(
                f"const c = {card(third_id)}; c.querySelector('button.edit').click();"
                f"c.querySelector('textarea').value = {json.dumps(json.dumps(edited))};"
                "c.querySelector('button.allow').click()"
            )
            view = await asyncio.wait_for(third, 10)
            assert view.decision is not None and view.decision.updated_input == edited

            # Decided elsewhere: the card goes away by itself.
            fourth = asyncio.create_task(worker.ask(ask("Read", file_path="notes/d.txt")))
            fourth_id = (await poll(lambda: pending_ids(session, a.url)))[0]
            await page.until("!!" + card(fourth_id), "the fourth card")
            status, _ = await respond(session, a.url, fourth_id, {"behavior": "deny"})
            assert status == 200
            await page.until(f"!{card(fourth_id)}", "the card decided elsewhere to go")
            assert (await asyncio.wait_for(fourth, 10)).status == "denied"
            assert await page.evaluate("document.querySelector('#empty').style.display") == ""
    finally:
        await worker.aclose()
