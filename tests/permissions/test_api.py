"""The permissions service over real HTTP and real Redis: replicas, restarts, races, expiry."""

from __future__ import annotations

import asyncio

import pytest

from tests.permissions.clients import Stream, ask, client, gate, headers, pending_ids, poll, respond
from tests.permissions.conftest import INTERNAL_SECRET, StartPermissions
from tests.permissions.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(90)


async def test_a_decision_on_one_replica_resumes_a_run_waiting_on_the_other(permissions: StartPermissions) -> None:
    a, b = permissions(), permissions()
    worker = gate(a.url)
    try:
        async with client() as session:
            waiting = asyncio.create_task(worker.ask(ask()))
            # A client that connects after the request was made still sees it (replayed).
            request_id = (await poll(lambda: pending_ids(session, b.url), message="the pending request"))[0]
            async with Stream(session, b.url) as stream:
                replayed = await stream.wait_for("permission_request", request_id)
                assert replayed["tool_name"] == "Write"
                assert replayed["input"]["nested"] == {"list": [1, 2, []]}  # arbitrary JSON, intact
                assert replayed["key_name"] == "admin"
                assert not waiting.done()

                edited = {"file_path": "notes/other.txt", "content": "edited"}
                status, body = await respond(session, b.url, request_id, {"behavior": "allow", "updated_input": edited})
                assert status == 200, body
                assert body["status"] == "allowed"

                view = await asyncio.wait_for(waiting, 10)
                assert view.status == "allowed"
                assert view.decision is not None and view.decision.updated_input == edited
                assert view.decision.decided_by == "admin"
                resolved = await stream.wait_for("permission_resolved", request_id)
                assert resolved["decision"]["behavior"] == "allow"

            async with session.get(f"{a.url}/permissions/{request_id}", headers=headers()) as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "allowed"
            assert await pending_ids(session, a.url) == []
    finally:
        await worker.aclose()


async def test_the_first_decision_wins_across_replicas(permissions: StartPermissions) -> None:
    a, b = permissions(), permissions()
    worker = gate(a.url)
    try:
        async with client() as session:
            waiting = asyncio.create_task(worker.ask(ask("Bash", command="rm -rf build")))
            request_id = (await poll(lambda: pending_ids(session, a.url), message="the pending request"))[0]
            answers = await asyncio.gather(*(
                respond(session, (a, b)[i % 2].url, request_id, {"behavior": ("allow", "deny")[i % 3 == 0]})
                for i in range(12)
            ))
            wins = [body for status, body in answers if status == 200]
            losses = [body for status, body in answers if status == 409]
            assert len(wins) == 1 and len(losses) == 11, answers
            winner = wins[0]["status"]
            assert all(body["permission"]["status"] == winner for body in losses)
            assert all("already decided" in body["error"]["message"] for body in losses)
            view = await asyncio.wait_for(waiting, 10)
            assert view.status == winner

            status, body = await respond(session, b.url, "perm_unknown", {"behavior": "allow"})
            assert status == 404 and body["error"]["type"] == "not_found_error"
            async with session.get(f"{b.url}/permissions/perm_unknown", headers=headers()) as resp:
                assert resp.status == 404
            status, body = await respond(session, b.url, request_id, {"behavior": "maybe"})
            assert status in (400, 409)
    finally:
        await worker.aclose()


async def test_a_deny_tells_claude_who_denied_and_why(permissions: StartPermissions) -> None:
    a = permissions()
    worker = gate(a.url)
    try:
        async with client() as session:
            waiting = asyncio.create_task(worker.ask(ask()))
            request_id = (await poll(lambda: pending_ids(session, a.url), message="the pending request"))[0]
            status, _ = await respond(session, a.url, request_id, {"behavior": "deny", "message": "not in /tmp"})
            assert status == 200
            view = await asyncio.wait_for(waiting, 10)
            assert view.status == "denied" and view.decision is not None
            assert view.decision.behavior == "deny"
            assert view.decision.message == "admin denied permission to use Write: not in /tmp"
    finally:
        await worker.aclose()


async def test_pending_requests_survive_a_restart_and_the_waiter_still_gets_the_decision(
    permissions: StartPermissions,
) -> None:
    a = permissions()
    worker = gate(a.url)
    try:
        async with client() as session:
            waiting = asyncio.create_task(worker.ask(ask()))
            request_id = (await poll(lambda: pending_ids(session, a.url), message="the pending request"))[0]
            a.kill()  # no goodbye: in-memory state, if there were any, is gone
            restarted = permissions(port=a.port)
            assert await pending_ids(session, restarted.url) == [request_id]
            async with Stream(session, restarted.url) as stream:
                await stream.wait_for("permission_request", request_id)
            status, _ = await respond(session, restarted.url, request_id, {"behavior": "allow"})
            assert status == 200
            # The worker's long poll broke with the restart; it retried and got the decision.
            view = await asyncio.wait_for(waiting, 15)
            assert view.status == "allowed"
    finally:
        await worker.aclose()


async def test_an_unanswered_request_is_denied_with_a_clear_message(permissions: StartPermissions) -> None:
    a = permissions(PERMISSIONS__TIMEOUT_SECONDS="1.5")
    worker = gate(a.url)
    try:
        async with client() as session, Stream(session, a.url) as stream:
            view = await asyncio.wait_for(worker.ask(ask()), 15)
            assert view.status == "expired"
            assert view.decision is not None and view.decision.behavior == "deny"
            assert view.decision.message == (
                "Permission to use Write was denied: nobody answered the request within 1.5 seconds."
            )
            expired = await stream.wait_for("permission_expired", view.id)
            assert expired["status"] == "expired"
            assert stream.ids("permission_request") == [view.id]
            assert stream.ids("permission_expired") == [view.id]  # announced once
            status, body = await respond(session, a.url, view.id, {"behavior": "allow"})
            assert status == 409 and body["permission"]["status"] == "expired"
    finally:
        await worker.aclose()


async def test_the_sweeper_expires_requests_nobody_waits_for(permissions: StartPermissions) -> None:
    a = permissions(PERMISSIONS__TIMEOUT_SECONDS="1")
    async with client() as session, Stream(session, a.url) as stream:
        async with session.post(
            f"{a.url}/internal/permissions",
            data=ask().model_dump_json(),
            headers={"x-ccproxy-internal-secret": INTERNAL_SECRET},
        ) as resp:
            assert resp.status == 200
            request_id = (await resp.json())["id"]
        # The worker that made it is gone (it never waits): the service still expires it.
        await stream.wait_for("permission_expired", request_id, within=10)
        assert await pending_ids(session, a.url) == []


async def test_keys_are_required_and_internal_calls_need_the_secret(permissions: StartPermissions) -> None:
    a = permissions()
    async with client() as session:
        for key in (None, "wrong-key"):
            async with session.get(f"{a.url}/permissions/stream", headers=headers(key)) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["type"] == "authentication_error"
            status, _ = await respond(session, a.url, "perm_x", {"behavior": "allow"}, key=key)
            assert status == 401
        async with session.get(f"{a.url}/permissions/ui") as resp:
            assert resp.status == 200
            assert "Tool permissions" in await resp.text()  # the page itself holds no data
        async with session.post(f"{a.url}/internal/permissions", data=ask().model_dump_json()) as resp:
            assert resp.status == 403
        async with session.get(
            f"{a.url}/permissions/stream", headers=headers()
        ) as resp:
            assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")


async def test_the_stream_sends_keepalive_pings(permissions: StartPermissions) -> None:
    a = permissions(PERMISSIONS__KEEPALIVE_SECONDS="0.3")
    async with client() as session, Stream(session, a.url) as stream:
        await stream.wait_for("ping", within=5)


async def test_a_decision_made_while_the_waiting_side_lost_redis_still_reaches_it(
    permissions: StartPermissions,
) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    port = proxy.start()
    a = permissions(REDIS__URL=f"redis://127.0.0.1:{port}/0")  # waits for the run, through the relay
    b = permissions()  # the approver's replica, on Redis directly
    worker = gate(a.url)
    try:
        async with client() as session:
            waiting = asyncio.create_task(worker.ask(ask()))
            request_id = (await poll(lambda: pending_ids(session, b.url), message="the pending request"))[0]
            proxy.cut()
            async with session.get(f"{a.url}/permissions/{request_id}", headers=headers()) as resp:
                assert resp.status == 503  # a is really cut off from Redis
            status, _ = await respond(session, b.url, request_id, {"behavior": "allow"})
            assert status == 200
            # The pub/sub message went out while a was disconnected: a never heard it.
            done, _ = await asyncio.wait({waiting}, timeout=1.0)
            assert not done
            proxy.restore()
            view = await asyncio.wait_for(waiting, 15)
            assert view.status == "allowed"
    finally:
        await worker.aclose()
        proxy.close()
