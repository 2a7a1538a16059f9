"""The Responses API's response store end to end: the official ``openai`` SDK -> ``ccproxy serve``
-> the fake upstream. ``previous_response_id`` over several turns (the fake must receive the whole
conversation each turn), ``item_reference``, ``GET``/``input_items``/``DELETE``, ``store: false``,
the chain and size caps, and per-member ownership on the real Redis."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx2 as httpx
import openai
import pytest
import redis as redis_sync

from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import ResponsesSettings
from ccproxy_gateway.openai.models import ResponsesRequest
from ccproxy_gateway.response_store import ResponseStore
from tests.accounts.helpers import REDIS_URL, make_team
from tests.accounts.test_keys import create_key
from tests.openai.conftest import OpenAIServer, start_openai_server
from tests.support.fake import FakeUpstream
from tests.support.process import wait_until
from tests.support.serve import REPO_ROOT

TOOL = {
    "type": "function", "name": "lookup", "description": "Look a word up",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}, "strict": False,
}


def upstream_messages(server: OpenAIServer, response: Any) -> list[dict[str, Any]]:
    """The Anthropic messages the fake received for the answer behind ``response``."""
    raw = response if isinstance(response, httpx.Response) else None
    request_id = raw.headers.get("x-request-id") if raw is not None else response
    return server.upstream(request_id)["body"]["messages"]  # type: ignore[no-any-return]


def texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for message in messages:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        out.append((message["role"], " ".join(b.get("text", f"<{b['type']}>") for b in blocks)))
    return out


def create(server: OpenAIServer, **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A response (plain) and the messages the fake received for it."""
    raw = server.client().responses.with_raw_response.create(model="gpt-5", **kwargs)
    return raw.parse(), server.upstream(raw.headers.get("x-request-id"))["body"]["messages"]


def stream(server: OpenAIServer, **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A streamed response (the final one) and the messages the fake received for it."""
    with server.client().responses.stream(model="gpt-5", **kwargs) as events:
        final = events.get_final_response()
    records = [r for r in server.fake.requests(path="/v1/messages") if kwargs["input"] in str(r["body"])]
    return final, records[-1]["body"]["messages"]


@pytest.mark.parametrize("send", [create, stream], ids=["plain", "streamed"])
def test_previous_response_id_over_three_turns(server: OpenAIServer, send: Any) -> None:
    tag = secrets.token_hex(4)
    first, seen = send(server, input=f"one {tag}")
    assert first.store is True and first.previous_response_id is None
    assert texts(seen) == [("user", f"one {tag}")]
    second, seen = send(server, input=f"two {tag}", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.store is True
    assert texts(seen) == [("user", f"one {tag}"), ("assistant", f"Echo: one {tag}"), ("user", f"two {tag}")]
    third, seen = send(server, input=f"three {tag}", previous_response_id=second.id)
    assert texts(seen) == [
        ("user", f"one {tag}"), ("assistant", f"Echo: one {tag}"), ("user", f"two {tag}"),
        ("assistant", f"Echo: two {tag}"), ("user", f"three {tag}"),
    ]
    assert third.output_text == f"Echo: three {tag}"
    # The store keeps it as it was answered.
    again = server.client().responses.retrieve(third.id)
    assert (again.id, again.output_text, again.usage, again.previous_response_id) == (
        third.id, third.output_text, third.usage, second.id)


def test_function_call_and_thinking_continue_from_the_store(server: OpenAIServer) -> None:
    client = server.client()
    first = client.responses.create(model="gpt-5", input="think, then call [[fake:thinking]] [[fake:tool]]",
                                    tools=[TOOL], reasoning={"effort": "low"})  # type: ignore[list-item]
    call = next(item for item in first.output if item.type == "function_call")
    assert first.output[0].type == "reasoning"
    raw = client.responses.with_raw_response.create(
        model="gpt-5", previous_response_id=first.id, tools=[TOOL], reasoning={"effort": "low"},  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "found it"}])
    messages = server.upstream(raw.headers.get("x-request-id"))["body"]["messages"]
    assistant = messages[1]["content"]
    # The thinking block came back with its signature (the fake checks it), before the tool call.
    assert [b["type"] for b in assistant] == ["thinking", "text", "tool_use"]
    assert assistant[2]["id"] == call.call_id
    result = messages[2]["content"][0]
    assert (result["type"], result["tool_use_id"], result["content"]) == ("tool_result", call.call_id, "found it")
    assert f"{call.call_id}=found it" in raw.parse().output_text


def test_item_reference_resolves_to_a_stored_item(server: OpenAIServer) -> None:
    """What the Vercel AI SDK sends on a tool loop's second step: the earlier output by id."""
    client = server.client()
    tag = secrets.token_hex(4)
    user = {"role": "user", "content": [{"type": "input_text", "text": f"call {tag} [[fake:tool]]"}]}
    first = client.responses.create(model="gpt-5", input=[user], tools=[TOOL])  # type: ignore[list-item]
    refs = [{"type": "item_reference", "id": item.id} for item in first.output]
    call = next(item for item in first.output if item.type == "function_call")
    raw = client.responses.with_raw_response.create(model="gpt-5", tools=[TOOL], input=[  # type: ignore[list-item]
        user, *refs, {"type": "function_call_output", "call_id": call.call_id, "output": "42"}])
    messages = server.upstream(raw.headers.get("x-request-id"))["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert [b["type"] for b in messages[1]["content"]] == ["text", "tool_use"]
    # input_items lists the references as the items they named.
    listed = client.responses.input_items.list(raw.parse().id, order="asc")
    assert [item.type for item in listed.data] == ["message", "message", "function_call", "function_call_output"]
    assert listed.data[2].id == call.id


def test_unknown_references_are_404s_in_openai_shape(server: OpenAIServer) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-5", input="again", previous_response_id="resp_nope")
    assert caught.value.param == "previous_response_id" and "resp_nope" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-5", input=[{"type": "item_reference", "id": "msg_nope"}])  # type: ignore[list-item]
    assert caught.value.param == "input.0" and "msg_nope" in caught.value.message
    for call in (lambda: client.responses.retrieve("resp_nope"), lambda: client.responses.delete("resp_nope"),
                 lambda: client.responses.input_items.list("resp_nope")):
        with pytest.raises(openai.NotFoundError):
            call()


def test_get_input_items_and_delete(server: OpenAIServer) -> None:
    client = server.client()
    items = [{"role": "user", "content": f"part {n}"} for n in range(5)]
    response = client.responses.create(model="gpt-5", input=items, store=True)  # type: ignore[arg-type]
    listed = client.responses.input_items.list(response.id, limit=2)  # newest first by default
    assert listed.object == "list" and listed.has_more is True and len(listed.data) == 2
    assert [item.content[0].text for item in listed.data] == ["part 4", "part 3"]  # type: ignore[union-attr]
    assert (listed.first_id, listed.last_id) == (listed.data[0].id, listed.data[1].id)
    rest = client.responses.input_items.list(response.id, limit=10, after=listed.last_id)
    assert [item.content[0].text for item in rest.data] == ["part 2", "part 1", "part 0"]  # type: ignore[union-attr]
    assert rest.has_more is False
    asc = client.responses.input_items.list(response.id, order="asc")
    assert [item.id for item in asc.data] == [item.id for item in reversed([*listed.data, *rest.data])]
    # Every page the SDK's auto-pagination walks.
    assert len(list(client.responses.input_items.list(response.id, limit=1))) == 5
    bad = httpx.get(f"{server.base_url}/responses/{response.id}/input_items?limit=0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    # One store for API and SDK mode.
    for base in ("/sdk/v1", "/sdk/some-session/v1"):
        assert httpx.get(f"{server.url}{base}/responses/{response.id}").json()["id"] == response.id
    deleted = httpx.delete(f"{server.base_url}/responses/{response.id}")
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-5", input="more", previous_response_id=response.id)


def test_delete_forgets_only_the_items_its_response_holds(server: OpenAIServer) -> None:
    client = server.client()
    first = client.responses.create(model="gpt-5", input="one", store=True)
    own_input = client.responses.input_items.list(first.id).data[0].id
    answer = first.output[0].id
    # A later request sends the first answer again, with its id: the later response holds that item now.
    resent = {"type": "message", "role": "assistant", "id": answer,
              "content": [{"type": "output_text", "text": "sent again"}]}
    client.responses.create(model="gpt-5", input=[resent, {"role": "user", "content": "two"}], store=True)  # type: ignore[list-item]
    client.responses.delete(first.id)

    def refer(item_id: str) -> None:
        reference = {"type": "item_reference", "id": item_id}
        client.responses.create(model="gpt-5", input=[reference, {"role": "user", "content": "go on"}])  # type: ignore[list-item]

    refer(answer)  # still the later response's
    with pytest.raises(openai.NotFoundError):
        refer(own_input)  # gone with the first


@pytest.mark.parametrize("streamed", [False, True])
def test_store_false_keeps_nothing(server: OpenAIServer, streamed: bool) -> None:
    client = server.client()
    if streamed:
        with client.responses.stream(model="gpt-5", input="forget me", store=False) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model="gpt-5", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


# --- caps ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[OpenAIServer]:
    env: dict[str, str | None] = {"RESPONSES__MAX_CHAIN": "3", "RESPONSES__MAX_BYTES_PER_KEY": "20000"}
    srv = start_openai_server(tmp_path_factory.mktemp("capped"), fake_upstream, env)
    try:
        yield srv
    finally:
        srv.proc.stop()


def test_a_chain_longer_than_the_cap_is_a_clear_400(capped: OpenAIServer) -> None:
    client = capped.client()
    previous = None
    for n in range(4):  # the fourth continues a chain of three: the cap
        previous = client.responses.create(model="gpt-5", input=f"turn {n}", previous_response_id=previous).id
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-5", input="one too many", previous_response_id=previous)
    assert caught.value.param == "previous_response_id" and "RESPONSES__MAX_CHAIN" in caught.value.message


def test_over_the_size_cap_the_oldest_responses_go(capped: OpenAIServer) -> None:
    client = capped.client()
    ids = [client.responses.create(model="gpt-5", input=f"{n} " + "x" * 3000).id for n in range(8)]

    def kept(response_id: str) -> bool:
        try:
            client.responses.retrieve(response_id)
        except openai.NotFoundError:
            return False
        return True

    present = [kept(i) for i in ids]
    assert present[-1] and not present[0]
    assert present == sorted(present)  # the oldest went first
    assert sum(present) <= 20000 // 6000 + 1


# --- ownership, on the real Redis --------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"test:{secrets.token_hex(6)}:"
    yield prefix
    client = redis_sync.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def test_members_see_only_their_own_responses(tmp_path: Path, fake_upstream: FakeUpstream, prefix: str) -> None:
    team = make_team(tmp_path, fake_upstream, prefix, REDIS__URL=REDIS_URL)
    team.add_api_key("main")
    alice = create_key(team, "--name", "alice")["key"]
    bob = create_key(team, "--name", "bob")["key"]
    lead = f"lead-token-{secrets.token_hex(8)}"
    proc = team.serve(SECURITY__KEY_CACHE_SECONDS="0.5", SECURITY__AUTH_TOKEN=lead)
    server = OpenAIServer(proc, fake_upstream)
    secret_text = f"alice's secret {secrets.token_hex(8)}"
    try:
        as_alice, as_bob = server.client(api_key=alice), server.client(api_key=bob)
        mine = as_alice.responses.create(model="gpt-5", input=secret_text)
        assert as_alice.responses.retrieve(mine.id).output_text == f"Echo: {secret_text}"
        call = next(item for item in mine.output if item.type == "message")
        # Another member: as if it did not exist (404, not 403), for every way of reaching it.
        for attempt in (
            lambda: as_bob.responses.retrieve(mine.id),
            lambda: as_bob.responses.input_items.list(mine.id),
            lambda: as_bob.responses.delete(mine.id),
            lambda: as_bob.responses.create(model="gpt-5", input="mine now", previous_response_id=mine.id),
            lambda: as_bob.responses.create(model="gpt-5", input=[{"type": "item_reference", "id": call.id}]),  # type: ignore[list-item]
        ):
            with pytest.raises(openai.NotFoundError):
                attempt()
        # Nobody at all: refused before any lookup.
        assert httpx.get(f"{server.base_url}/responses/{mine.id}").status_code == 401
        # Bob's own work is his; alice's is still there after his attempt to delete it.
        theirs = as_bob.responses.create(model="gpt-5", input="bob's", previous_response_id=None)
        assert as_bob.responses.retrieve(theirs.id).id == theirs.id
        assert as_alice.responses.retrieve(mine.id).id == mine.id
        # The shared (lead) token is an owner of its own, too.
        as_lead = server.client(api_key=lead)
        leads = as_lead.responses.create(model="gpt-5", input="the lead's")
        with pytest.raises(openai.NotFoundError):
            as_lead.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            as_alice.responses.retrieve(leads.id)
        assert as_lead.responses.retrieve(leads.id).id == leads.id
        # A revoked key is refused, its responses unreachable.
        team.ccproxy("keys", "revoke", "alice")
        wait_until(lambda: httpx.get(f"{server.base_url}/responses/{mine.id}",
                                     headers={"authorization": f"Bearer {alice}"}).status_code == 401,
                   timeout=6, interval=0.1, message="revocation")
        with pytest.raises(openai.AuthenticationError):
            as_alice.responses.create(model="gpt-5", input="more", previous_response_id=mine.id)
        # Stored on the real Redis, under the key prefix, and the conversation never in the log.
        stored = list(redis_sync.Redis.from_url(REDIS_URL).scan_iter(match=f"{prefix}responses:*:r:{mine.id}"))
        assert len(stored) == 1
        assert secret_text not in proc.log_text()
    finally:
        proc.stop()


# --- the Vercel AI SDK, with its defaults ------------------------------------------------------

NODE_SCRIPT = Path(__file__).with_name("vercel_ai_sdk.mjs")


@pytest.mark.timeout(180)
def test_vercel_ai_sdk_tool_loop_with_store_on(server: OpenAIServer) -> None:
    """``generateText`` and ``streamText`` with a three-step tool loop and the OpenAI provider's
    defaults (Responses API, ``store`` on: later steps send ``item_reference`` items)."""
    assert (REPO_ROOT / "node_modules" / "ai").exists(), "the AI SDK is missing: run scripts/setup.sh (npm ci)"
    tag = f"vercel-{secrets.token_hex(4)}"
    env = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}
    env |= {"CCPROXY_BASE_URL": server.base_url, "CCPROXY_API_KEY": "sk-vercel", "TAG": tag}
    done = subprocess.run(["node", str(NODE_SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["run"] for r in runs] == [f"{tag}-generate", f"{tag}-stream"]
    for run in runs:
        steps = run["steps"]
        assert [s["toolCalls"] for s in steps] == [
            [{"name": "lookup", "input": {"q": "first"}}], [{"name": "lookup", "input": {"q": "second"}}], []]
        assert [s["finishReason"] for s in steps] == ["tool-calls", "tool-calls", "stop"]
        assert f"{run['run']} result two" in run["text"]
        # The provider's defaults: store left on, earlier output sent by reference.
        assert run["requests"] == 3 and all(s in (None, True) for s in run["stores"])
        assert run["itemReferences"][0] == 0 and all(n > 0 for n in run["itemReferences"][1:])
        # The upstream saw the whole conversation on the last step, references resolved.
        bodies = [r["body"] for r in server.fake.requests(path="/v1/messages") if run["run"] in str(r["body"])]
        last = bodies[-1]["messages"]
        assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
        assert [b["type"] for b in last[1]["content"]][-1] == "tool_use"
        assert [b["type"] for b in last[3]["content"]][-1] == "tool_use"
        assert last[4]["content"][0]["type"] == "tool_result"
    assert runs[1]["streamed"].endswith(runs[1]["text"])  # every step's text, streamed


@pytest.mark.parametrize("body", [
    {"input": "x", "previous_response_id": 7},
    {"input": [{"type": "item_reference"}]},
    {"input": [{"type": "item_reference", "id": ["a"]}]},
    {"input": "x", "previous_response_id": "resp_" + "z" * 5000},
    {"input": [{"type": "item_reference", "id": "../../*"}], "store": False},
    {"input": "x", "store": "maybe"},
])
def test_bad_store_input_is_a_4xx_in_openai_shape(server: OpenAIServer, body: dict[str, Any]) -> None:
    answer = httpx.post(f"{server.base_url}/responses", json={"model": "gpt-5", **body})
    assert 400 <= answer.status_code < 500, answer.text
    assert set(answer.json()["error"]) >= {"message", "type", "param"}


@pytest.mark.parametrize("query", ["limit=abc", "limit=101", "order=sideways", "after=nope", "limit=-1"])
def test_bad_input_items_queries_are_400s(server: OpenAIServer, query: str) -> None:
    response = server.client().responses.create(model="gpt-5", input="list me")
    answer = httpx.get(f"{server.base_url}/responses/{response.id}/input_items?{query}")
    assert answer.status_code == 400 and answer.json()["error"]["param"] == query.split("=")[0]


# --- the store's layout in Redis (units, on the embedded Redis stand-in) -------------------------


def _plain_response(response_id: str, text: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "status": "completed", "output": [
        {"type": "message", "id": f"msg_{response_id}", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": text}]}]}


async def test_each_response_keeps_only_its_own_turn_and_continuing_renews_the_chain() -> None:
    redis = fakeredis.FakeAsyncRedis()
    store = ResponseStore(redis, ResponsesSettings(retention_days=2), "unit:")
    previous = None
    big = "y" * 10_000
    for n in range(5):
        req = ResponsesRequest.model_validate(
            {"model": "gpt-5", "input": f"turn {n} {big}", "previous_response_id": previous})
        full, turn = await store.prepare("alice", req)
        if n:  # the whole conversation
            assert isinstance(full.input, list) and len(full.input) == 2 * n + 1
        await store.save(turn, _plain_response(f"resp_{n}", f"answer {n}"))
        previous = f"resp_{n}"
    sizes = [len(await redis.get(f"unit:responses:alice:r:resp_{n}")) for n in range(5)]
    assert max(sizes) < 2 * min(sizes)  # a turn's own items, not the conversation so far
    assert 2 * 86400 - 5 <= await redis.ttl("unit:responses:alice:r:resp_0") <= 2 * 86400
    await redis.expire("unit:responses:alice:r:resp_0", 60)
    req = ResponsesRequest.model_validate({"model": "gpt-5", "input": "again", "previous_response_id": "resp_4"})
    await store.prepare("alice", req)
    assert await redis.ttl("unit:responses:alice:r:resp_0") > 86400  # renewed by the continuation
    # Another owner's namespace has none of it.
    with pytest.raises(ProxyError) as caught:
        await store.prepare("bob", req)
    assert caught.value.status == 404
