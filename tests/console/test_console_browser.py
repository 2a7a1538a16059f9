"""The admin console and the member page in headless Chromium, as a team lead and a member use them.

The lead signs in with the admin token, creates a key, the key is used with the official
anthropic SDK against the fake upstream, its spend shows in the list, its budget is edited (the
next request is refused for it), it is revoked (the next request is refused). A member signs in
to ``/me`` and sees their own requests and approvals, nobody else's. Screenshots of both pages
go to docs/ when ``UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anthropic
import httpx2 as httpx
import pytest
import redis.asyncio as aioredis

from ccproxy_core.permissions import PermissionAsk
from ccproxy_core.settings import PermissionsSettings
from ccproxy_permissions.broker import PermissionStore
from tests.accounts.helpers import MODEL, REDIS_URL, Team, nonce
from tests.console.conftest import (
    ADMIN,
    CLICKABLE_NON_BUTTONS,
    DOCS,
    REPO_ROOT,
    UNLABELLED,
    fill,
    press,
    tab_to,
    type_text,
)
from tests.support.browser import Page
from tests.support.process import Proc

pytestmark = pytest.mark.timeout(180)
CLAUDE = REPO_ROOT / "node_modules" / ".bin" / "claude"
CODEX = REPO_ROOT / "node_modules" / ".bin" / "codex"


def sdk(proc: Proc, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proc.url + "/api", api_key=key, max_retries=0)


def ask(proc: Proc, key: str, text: str | None = None) -> Any:
    return sdk(proc, key).messages.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": text or nonce()}]
    )


async def snap(page: Page, tmp_path: Path, name: str) -> None:
    await page.screenshot(tmp_path / name)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        await page.screenshot(DOCS / name)


def row(name: str) -> str:
    return f"document.querySelector('#keys-table tr[data-name={json.dumps(name)}]')"


async def cookies(page: Page) -> dict[str, dict[str, Any]]:
    found = await page.send("Network.getCookies")
    return {c["name"]: c for c in found["cookies"]}


async def test_lead_runs_a_key_from_the_console(served: Proc, team: Team, page: Page, tmp_path: Path) -> None:
    await page.goto(f"{served.url}/admin")
    await page.until("document.body.dataset.ready === '1'", "the console script")
    assert await page.evaluate("!document.getElementById('signin').classList.contains('hidden')")
    assert await page.evaluate("document.getElementById('token').type") == "password"

    # A wrong token: a clear error, no session.
    await fill(page, "token", "not-the-token-" + "x" * 20)
    await page.evaluate("document.getElementById('signin-form').requestSubmit()")
    await page.until("document.getElementById('signin-error').textContent.includes('wrong admin token')",
                     "the wrong-token error")
    assert "ccproxy_admin" not in await cookies(page)

    # Keyboard only: Tab to the token field, type it, Enter.
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    await tab_to(page, "token")
    await type_text(page, ADMIN)
    await press(page, "Enter")
    await page.until("!document.getElementById('app').classList.contains('hidden')", "the signed-in console")
    session = (await cookies(page))["ccproxy_admin"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and ADMIN not in session["value"]
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert await page.evaluate(UNLABELLED) == []
    assert await page.evaluate(CLICKABLE_NON_BUTTONS) == []
    html = await page.evaluate("document.documentElement.outerHTML")
    assert ADMIN not in html
    await page.until("!!document.querySelector('#accounts-table tr[data-account=main]')", "the account row")
    assert "api_key" in await page.evaluate("document.querySelector('#accounts-table tr[data-account=main]').innerText")

    # Create a key with a budget; it is shown once, with set-up snippets against this server.
    await fill(page, "new-budget", "50")  # Claude Code's requests reserve up to ~$10 each (max_tokens 32k)
    await fill(page, "new-rpm", "600")
    await fill(page, "new-name", "alice")  # focused last: Enter in it submits the form
    await press(page, "Enter")
    await page.until("!document.getElementById('newkey').classList.contains('hidden')", "the new key")
    key = await page.evaluate("document.getElementById('newkey-value').value")
    assert key.startswith("ccp_")
    snippets = await page.evaluate("document.getElementById('newkey-snippets').innerText")
    for expected in (f"ANTHROPIC_BASE_URL={served.url}/api", f'base_url="{served.url}/api/v1"', "wire_api",
                     f"curl {served.url}/api/v1/messages", f"ANTHROPIC_AUTH_TOKEN={key}"):
        assert expected in snippets
    assert await page.evaluate("document.activeElement.id") == "newkey-copy"
    await snap(page, tmp_path, "console-new-key.png")

    # Ready to paste: the anthropic and openai snippets run as they are, and so does the curl line.
    shown = dict(await page.evaluate(
        "[...document.querySelectorAll('#newkey-snippets .snippet')]"
        ".map(s => [s.querySelector('h3 span').textContent, s.querySelector('pre').textContent])"))
    for title, tail in (("Anthropic SDK (Python)", "print(msg.content[0].text)"),
                        ("OpenAI SDK (Python)", "print(chat.choices[0].message.content)")):
        ran = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", shown[title] + "\n" + tail],
                                      capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0 and ran.stdout.strip(), (title, ran.stderr)
    curl = await asyncio.to_thread(subprocess.run, ["bash", "-c", shown["curl"]], capture_output=True, text=True,
                                   timeout=60, check=False)
    assert curl.returncode == 0 and json.loads(curl.stdout)["type"] == "message", curl.stdout + curl.stderr

    # The official SDK with the new key, through this server, to the fake upstream.
    answer = await asyncio.to_thread(ask, served, key)
    assert answer.content and answer.usage.output_tokens > 0

    # Its spend and request count appear in the list (a reload keeps the session).
    await page.goto(f"{served.url}/admin")
    await page.until(f"!!{row('alice')}", "alice's row")
    assert await page.evaluate(f"{row('alice')}.querySelector('.requests').textContent") == "4"

    # The Claude Code set-up as pasted, with the real CLI (npm) in print mode.
    prompt = "hello from the console set-up"
    script = shown["Claude Code"].replace("\nclaude", f'\n"$CLAUDE" -p {json.dumps(prompt)}')
    assert script != shown["Claude Code"]
    home = tmp_path / "cli-home"
    (home / ".claude").mkdir(parents=True)
    cli_env = {"PATH": os.environ["PATH"], "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
               "CLAUDE": str(CLAUDE), "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    cli = await asyncio.to_thread(subprocess.run, ["bash", "-c", script], env=cli_env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert cli.returncode == 0 and cli.stdout.strip().endswith(prompt), cli.stdout + cli.stderr

    # The Codex set-up as pasted: config.toml, then the key in CCPROXY_API_KEY.
    config, _, export = shown["Codex CLI (~/.codex/config.toml)"].partition("# then: export ")
    name, _, value = export.strip().partition("=")
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(config)
    codex_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(codex_home), name: value,
                 "NO_COLOR": "1"}
    codex = await asyncio.to_thread(
        subprocess.run, [str(CODEX), "exec", "--skip-git-repo-check", "hello from codex"], env=codex_env,
        cwd=tmp_path, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL, check=False)
    assert codex.returncode == 0 and "hello from codex" in codex.stdout, codex.stdout + codex.stderr[-2000:]
    period = await page.evaluate(f"{row('alice')}.querySelector('.period').innerText")
    assert "of $50.00 / month" in period and not period.startswith("$0.0000 ")
    assert await page.evaluate("document.getElementById('newkey').classList.contains('hidden')")  # shown once

    # Edit the budget down to a millionth of a dollar: the next request is refused for it.
    # By keyboard: Enter on the row's Edit button opens the dialog, Escape closes it, Enter in a field saves.
    await page.evaluate(f"{row('alice')}.querySelector('button.edit').focus()")
    await press(page, "Enter")
    await page.until("document.getElementById('edit').open", "the edit dialog")
    await press(page, "Escape")
    await page.until("!document.getElementById('edit').open", "Escape to close the dialog")
    await page.evaluate(f"{row('alice')}.querySelector('button.edit').focus()")
    await press(page, "Enter")
    await page.until("document.getElementById('edit').open", "the edit dialog again")
    assert await page.evaluate("document.getElementById('edit-budget').value") == "50"
    await fill(page, "edit-budget", "0.000001")
    await press(page, "Enter")
    await page.until("!document.getElementById('edit').open", "the dialog to close")
    assert await page.evaluate("document.activeElement.classList.contains('edit')")  # focus back on the row
    await page.until(f"{row('alice')}.querySelector('.period').innerText.includes('of $0.0000 / month')",
                     "the new budget in the list")
    with pytest.raises(anthropic.APIStatusError) as refused:
        await asyncio.to_thread(ask, served, key)
    assert refused.value.status_code == 402

    # Revoke (two clicks: no blocking dialog); the key is refused from then on.
    await page.evaluate(f"{row('alice')}.querySelector('button.revoke').click()")
    assert await page.evaluate(f"{row('alice')}.querySelector('button.revoke').textContent") == "Confirm revoke"
    await page.evaluate(f"{row('alice')}.querySelector('button.revoke').click()")
    await page.until(f"!{row('alice')}", "alice's row to go")

    def refused_now() -> int:
        try:
            ask(served, key)
        except anthropic.APIStatusError as exc:
            return exc.status_code
        return 200

    deadline = asyncio.get_running_loop().time() + 10  # the gateway trusts a lookup for 1 s here
    status = await asyncio.to_thread(refused_now)
    while status != 401 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        status = await asyncio.to_thread(refused_now)
    assert status == 401

    # Sign out: the session is gone on the server too.
    cookie = (await cookies(page))["ccproxy_admin"]["value"]
    await page.evaluate("document.getElementById('sign-out').click()")
    await page.until("!document.getElementById('signin').classList.contains('hidden')", "the sign-in form")
    gone = httpx.get(f"{served.url}/admin/keys", cookies={"ccproxy_admin": cookie})
    assert gone.status_code == 401
    # Neither the admin token nor the key was ever logged.
    log = served.log_text()
    assert ADMIN not in log and key not in log


async def make_permission(prefix: str, key_id: str, key_name: str, path: str) -> str:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        store = PermissionStore(client, prefix, PermissionsSettings())
        ask = PermissionAsk(tool_name="Write", input={"file_path": path, "content": "x"}, key_id=key_id,
                            key_name=key_name, title=f"Claude wants to write {path}")
        view = await store.create(ask)
        return view.id
    finally:
        await client.aclose()


def admin_api(proc: Proc, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = httpx.request(method, proc.url + path, json=body, headers={"authorization": f"Bearer {ADMIN}"})
    assert resp.status_code < 300, resp.text
    return resp.json()


def wait_for_rows(proc: Proc, key: str, count: int) -> list[dict[str, Any]]:
    """The key's access-log rows, once ``count`` are there (the consumer writes them shortly)."""
    end = time.monotonic() + 30
    while True:
        rows = httpx.get(proc.url + "/logs/query", headers={"x-api-key": key}).json().get("data", [])
        if len(rows) >= count or time.monotonic() > end:
            return list(rows)
        time.sleep(0.2)


async def test_member_sees_only_their_own(served: Proc, team: Team, page: Page, prefix: str, tmp_path: Path) -> None:
    alice = admin_api(served, "POST", "/admin/keys", {"name": "alice", "budget_usd": 20.0, "period": "week",
                                                      "rpm": 60})
    bob = admin_api(served, "POST", "/admin/keys", {"name": "bob"})
    for _ in range(3):
        await asyncio.to_thread(ask, served, alice["key"])
    await asyncio.to_thread(ask, served, bob["key"])
    alice_rows = await asyncio.to_thread(wait_for_rows, served, alice["key"], 3)
    bob_rows = await asyncio.to_thread(wait_for_rows, served, bob["key"], 1)
    assert len(alice_rows) == 3 and len(bob_rows) == 1
    alice_perm = await make_permission(prefix, alice["id"], "alice", "notes/alice.txt")
    bob_perm = await make_permission(prefix, bob["id"], "bob", "notes/bob.txt")

    await page.goto(f"{served.url}/me")
    await page.until("document.body.dataset.ready === '1'", "the page script")
    assert await page.evaluate(UNLABELLED) == []
    # Keyboard only: Tab to the key field, type, Enter.
    await tab_to(page, "key")
    await type_text(page, alice["key"])
    await press(page, "Enter")
    await page.until("document.querySelectorAll('#requests-table tr[data-request]').length === 3", "alice's rows")
    shown = await page.evaluate("[...document.querySelectorAll('#requests-table tr[data-request]')]"
                                ".map(r => r.dataset.request)")
    assert sorted(shown) == sorted(r["request_id"] for r in alice_rows)
    assert bob_rows[0]["request_id"] not in shown
    await page.until(f"!!document.querySelector('#approvals-list li[data-permission={json.dumps(alice_perm)}]')",
                     "alice's pending approval")
    assert await page.evaluate("document.querySelectorAll('#approvals-list li').length") == 1
    facts = await page.evaluate("document.getElementById('mine').innerText")
    assert "alice" in facts and "$20.00 per week" in facts and "60 requests/min" in facts
    assert "bob" not in await page.evaluate("document.body.innerText")
    await snap(page, tmp_path, "me.png")
    assert alice["key"] not in await page.evaluate("document.documentElement.outerHTML")

    # From alice's signed-in page, by any URL or parameter: nothing of bob's.
    async def fetch(path: str, method: str = "GET") -> list[Any]:
        return await page.evaluate(  # type: ignore[no-any-return]
            f"fetch({path!r}, {{method: {method!r}}}).then(async r => [r.status, await r.text()])")

    status, body = await fetch(f"/logs/query?key={bob['id']}")
    assert status == 403
    status, body = await fetch("/logs/query?limit=1000")
    assert status == 200 and bob["id"] not in body and bob_rows[0]["request_id"] not in body
    status, body = await fetch(f"/logs/usage?key={bob['id']}")
    assert status == 403
    status, body = await fetch(f"/logs/stream?key={bob['id']}")
    assert status == 403
    status, body = await fetch("/logs/usage?group_by=key")
    assert status == 200 and [u["key_id"] for u in json.loads(body)["data"]] == [alice["id"]]
    status, body = await fetch(f"/permissions/{bob_perm}")
    assert status == 404
    status, body = await fetch("/permissions")
    assert status == 200 and bob_perm not in body and alice_perm in body
    # The session is for reading: no /api, no /sdk, no decisions.
    status, _ = await fetch("/api/v1/models")
    assert status == 401
    status, _ = await fetch(f"/permissions/{alice_perm}/respond", "POST")
    assert status == 401
    status, _ = await fetch("/admin/keys")
    assert status == 401
    status, body = await fetch("/me/state")
    assert status == 200 and json.loads(body)["id"] == alice["id"]

    # Bob, signed in elsewhere, sees his own and never alice's.
    await page.evaluate("document.getElementById('sign-out').click()")
    await page.until("!document.getElementById('signin').classList.contains('hidden')", "signed out")
    await fill(page, "key", bob["key"])
    await page.evaluate("document.getElementById('signin-form').requestSubmit()")
    await page.until("document.querySelectorAll('#requests-table tr[data-request]').length === 1", "bob's row")
    text = await page.evaluate("document.body.innerText")
    assert "alice" not in text and "notes/alice.txt" not in text and "notes/bob.txt" in text


def account(name: str) -> str:
    return f"document.querySelector('#accounts-table tr[data-account={json.dumps(name)}]')"


async def test_lead_connects_a_subscription_and_sees_its_quota(
    served: Proc, team: Team, page: Page, tmp_path: Path
) -> None:
    await page.goto(f"{served.url}/admin")
    await page.until("document.body.dataset.ready === '1'", "the console script")
    await fill(page, "token", ADMIN)
    await page.evaluate("document.getElementById('signin-form').requestSubmit()")
    await page.until(f"!!{account('main')}", "the accounts")

    # The manual OAuth flow: start, open the authorize URL (the fake agrees at once), paste code#state.
    await fill(page, "oauth-name", "team-max")
    await page.evaluate("document.getElementById('oauth-start-form').requestSubmit()")
    await page.until("!document.getElementById('oauth-finish-form').classList.contains('hidden')", "the code field")
    url = await page.evaluate("document.getElementById('oauth-link').href")
    assert url.startswith(team.fake.url + "/oauth/authorize") and "code_challenge_method=S256" in url
    agreed = await asyncio.to_thread(httpx.get, url, follow_redirects=False)
    shown = parse_qs(urlsplit(agreed.headers["location"]).query)  # what the authorize page shows
    await fill(page, "oauth-code", "not-our-login#wrong-state")
    await page.evaluate("document.getElementById('oauth-finish-form').requestSubmit()")
    await page.until("document.getElementById('account-form-error').textContent.includes('state mismatch')",
                     "the mismatch error")
    await fill(page, "oauth-code", f"{shown['code'][0]}#{shown['state'][0]}")
    await page.evaluate("document.getElementById('oauth-finish-form').requestSubmit()")
    await page.until(f"!!{account('team-max')}", "the new subscription account")
    assert "oauth" in await page.evaluate(f"{account('team-max')}.innerText")

    # A key limited to that account; a request through it reports the subscription's quota.
    await fill(page, "new-name", "carol")
    await fill(page, "new-budget", "25")
    await fill(page, "new-accounts", "team-max")
    await page.evaluate("document.getElementById('create').click()")
    await page.until("!document.getElementById('newkey').classList.contains('hidden')", "the new key")
    key = await page.evaluate("document.getElementById('newkey-value').value")
    await page.evaluate("document.getElementById('newkey-done').click()")
    assert await page.evaluate("document.getElementById('newkey-value').value") == ""
    await asyncio.to_thread(ask, served, key)
    admin_api(served, "POST", "/admin/keys", {"name": "dan", "rpm": 30, "tpm": 200000})

    # Refresh now: a new token from the OAuth endpoint, and the time shows.
    before = len(team.fake.token_calls())
    await page.goto(f"{served.url}/admin")
    await page.until(f"!!{account('team-max')}", "the accounts")
    assert await page.evaluate(f"{account('team-max')}.cells[8].innerText") == "\u2013"  # a dash: never
    await page.evaluate(f"{account('team-max')}.querySelector('button.refresh').click()")
    await page.until(f"{account('team-max')}.cells[8].innerText.endsWith('UTC')", "the refresh time")
    assert len(team.fake.token_calls()) == before + 1
    cells = await page.evaluate(f"[...{account('team-max')}.cells].map(c => c.innerText)")
    quota = next(a for a in admin_api(served, "GET", "/admin/accounts") if a["name"] == "team-max")["quota"]
    assert cells[5] == f"{round(quota['5h']['utilization'] * 100)}%" != "0%"  # as the fake reported it
    assert cells[6] == f"{round(quota['7d']['utilization'] * 100)}%" != "0%"
    assert "accounts: team-max" in await page.evaluate(f"{row('carol')}.innerText")
    await snap(page, tmp_path, "console.png")
