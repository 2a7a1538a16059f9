"""Members see and decide only their own key's requests; the admin token sees all.

Real per-member keys: created with ``ccproxy keys create`` and looked up by the permissions
service in a real auth service (``SERVICES__AUTH_URL``), all on real Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.permissions.clients import Stream, ask, client, gate, headers, pending_ids, poll, respond
from tests.permissions.conftest import ADMIN_TOKEN, INTERNAL_SECRET, REDIS_URL, StartPermissions
from tests.support.ports import free_port
from tests.support.process import Proc, start_process
from tests.support.serve import CCPROXY, isolated_env, run_ccproxy

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def auth_service(tmp_path: Path, prefix: str) -> Iterator[tuple[Proc, dict[str, str]]]:
    run_dir = tmp_path / "auth"
    run_dir.mkdir()
    port = free_port()
    env = isolated_env(run_dir, overrides={
        "REDIS__URL": REDIS_URL, "REDIS__KEY_PREFIX": prefix, "SECURITY__INTERNAL_SECRET": INTERNAL_SECRET,
        "SECURITY__AUTH_TOKEN": ADMIN_TOKEN, "SERVER__PORT": str(port),
        "CLAUDE_CONFIG_DIR": str(run_dir / "claude"),
    })
    proc = start_process([str(CCPROXY), "run", "auth"], url=f"http://127.0.0.1:{port}",
                         health_url=f"http://127.0.0.1:{port}/health", log_path=run_dir / "auth.log",
                         env=env, cwd=run_dir, port=port)
    try:
        yield proc, env
    finally:
        proc.stop()


def create_key(env: dict[str, str], cwd: Path, name: str) -> dict[str, Any]:
    done = run_ccproxy(["keys", "create", "--name", name, "--json"], env, cwd)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


async def test_members_see_and_decide_only_their_own_requests(
    permissions: StartPermissions, auth_service: tuple[Proc, dict[str, str]], tmp_path: Path
) -> None:
    auth, env = auth_service
    alice = create_key(env, tmp_path, "alice")
    bob = create_key(env, tmp_path, "bob")
    a = permissions(SERVICES__AUTH_URL=auth.url)
    worker = gate(a.url)
    try:
        async with client() as session:
            alices = asyncio.create_task(worker.ask(ask("Write", key_id=alice["id"], key_name="alice")))
            bobs = asyncio.create_task(worker.ask(ask("Bash", key_id=bob["id"], key_name="bob")))
            both = await poll(lambda: _when_two(pending_ids(session, a.url)), message="both requests")
            async with (
                Stream(session, a.url, key=alice["key"]) as alice_stream,
                Stream(session, a.url, key=bob["key"]) as bob_stream,
                Stream(session, a.url) as admin_stream,
            ):
                alice_id = (await alice_stream.wait_for("permission_request"))["id"]
                bob_id = (await bob_stream.wait_for("permission_request"))["id"]
                assert {alice_id, bob_id} == set(both)
                for request_id in both:
                    await admin_stream.wait_for("permission_request", request_id)

                assert await pending_ids(session, a.url, key=alice["key"]) == [alice_id]
                assert await pending_ids(session, a.url, key=bob["key"]) == [bob_id]

                # Alice can neither read nor decide Bob's request; it stays pending.
                async with session.get(f"{a.url}/permissions/{bob_id}", headers=headers(alice["key"])) as resp:
                    assert resp.status == 404
                status, _ = await respond(session, a.url, bob_id, {"behavior": "allow"}, key=alice["key"])
                assert status == 404
                assert not bobs.done()

                status, body = await respond(session, a.url, bob_id, {"behavior": "deny"}, key=bob["key"])
                assert status == 200 and body["decision"]["decided_by"] == "bob"
                assert (await asyncio.wait_for(bobs, 10)).status == "denied"
                status, _ = await respond(session, a.url, alice_id, {"behavior": "allow"}, key=alice["key"])
                assert status == 200
                assert (await asyncio.wait_for(alices, 10)).status == "allowed"

                await admin_stream.wait_for("permission_resolved", alice_id)
                await admin_stream.wait_for("permission_resolved", bob_id)
                await alice_stream.wait_for("permission_resolved", alice_id)
                # Nothing of the other member's ever reached a member's stream.
                assert {d["id"] for _, d in alice_stream.events if "id" in d} == {alice_id}
                assert {d["id"] for _, d in bob_stream.events if "id" in d} == {bob_id}

            async with session.get(f"{a.url}/permissions/stream", headers=headers("ccp_not-a-key")) as resp:
                assert resp.status == 401
    finally:
        await worker.aclose()


async def _when_two(ids: Any) -> list[str] | None:
    found: list[str] = await ids
    return found if len(found) == 2 else None
