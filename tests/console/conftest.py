"""Fixtures of the console tests: ``ccproxy serve`` with client keys on the real Redis (a key
prefix of the test's own), an API-key account on the fake upstream, and an admin token; a
headless Chromium page (Debian's chromium over the DevTools protocol, tests/support/browser.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from tests.accounts.helpers import REDIS_URL, Team, make_team
from tests.support.browser import Page
from tests.support.fake import FakeUpstream
from tests.support.process import Proc

ADMIN = "console-admin-" + "z" * 24
REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix of the test's own, removed afterwards."""
    value = f"test:{secrets.token_hex(6)}:"
    yield value
    client = redis_sync.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def team(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> Team:
    team = make_team(tmp_path, fake_upstream, prefix, REDIS__URL=REDIS_URL, SECURITY__ADMIN_TOKEN=ADMIN,
                     SECURITY__KEY_CACHE_SECONDS="1")
    team.add_api_key("main")
    return team


@pytest.fixture
def served(team: Team) -> Iterator[Proc]:
    proc = team.serve()
    try:
        yield proc
    finally:
        proc.stop()


async def press(page: Page, key: str) -> None:
    """A real key press (keyDown + keyUp) as the keyboard sends it."""
    codes = {"Tab": 9, "Enter": 13, "Escape": 27, "Space": 32}
    params: dict[str, Any] = {"key": key, "code": key, "windowsVirtualKeyCode": codes[key]}
    if key == "Enter":
        params["text"] = "\r"
    await page.send("Input.dispatchKeyEvent", type="keyDown", **params)
    await page.send("Input.dispatchKeyEvent", type="keyUp", **params)


async def type_text(page: Page, text: str) -> None:
    await page.send("Input.insertText", text=text)


async def tab_to(page: Page, element_id: str, most: int = 12) -> int:
    """Press Tab until ``#element_id`` has the focus; how many presses it took."""
    for presses in range(1, most + 1):
        await press(page, "Tab")
        if await page.evaluate(f"document.activeElement && document.activeElement.id === {element_id!r}"):
            return presses
    raise AssertionError(f"#{element_id} not reached with {most} Tab presses")


async def fill(page: Page, element_id: str, value: str) -> None:
    """Set a field's value the way typing would (input events fire)."""
    await page.evaluate(
        f"(() => {{ const e = document.getElementById({element_id!r}); e.focus(); e.value = {value!r};"
        " e.dispatchEvent(new Event('input', {bubbles: true})); })()"
    )


UNLABELLED = (
    "[...document.querySelectorAll('input, select, textarea')]"
    ".filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
    ".map(e => e.id || e.outerHTML)"
)
CLICKABLE_NON_BUTTONS = (
    "[...document.querySelectorAll('[onclick], div[role=button], span[role=button]')].map(e => e.outerHTML)"
)
