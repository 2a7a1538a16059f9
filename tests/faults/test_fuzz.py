"""Property-based fuzzing of every public JSON endpoint of a running ``ccproxy serve``.

One ``ccproxy serve`` (real Redis, client keys on, a lead token) and one ``ccproxy run auth``
(for the admin API, which only the auth service has) answer hypothesis-generated requests over
HTTP from anonymous callers, wrong keys, a member key and the lead. The property, for every
request: an answer within the client timeout (a timeout is a failure), never a 5xx (the fake
upstream is never told to fail, so no 502/503/504 is excused), an error body in the format the
client spoke (Anthropic on ``/v1/messages`` and everything else, OpenAI on chat/completions and
responses), and ``/health`` still answering after each endpoint's run.

Bounded: each test has a fixed ``max_examples`` and every request a timeout. Examples are
derandomized (the same inputs on every run, so CI is stable); ``CCPROXY_FUZZ_RANDOM=1`` draws new
ones and ``CCPROXY_FUZZ_SCALE=N`` multiplies the number of examples, for a longer hunt by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx2 as httpx
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis as AsyncRedis

from ccproxy_core.permissions import PermissionAsk
from ccproxy_core.settings import PermissionsSettings
from ccproxy_permissions.broker import PermissionStore
from tests.faults.fuzz_strategies import CONTENT_TYPES as CONTENT_TYPE_LIST
from tests.faults.fuzz_strategies import (
    EDGE_FLOATS,
    EDGE_INTS,
    MODEL,
    any_value,
    deep,
    depths,
    encode,
    header_values,
    headers,
    invalid_bodies,
    logs_params,
    mutated_bodies,
    raw_bodies,
    texts,
    url_texts,
)
from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import Proc, start_process
from tests.support.serve import CCPROXY, REPO_ROOT, isolated_env, launch_serve, run_ccproxy, write_credentials

REDIS_URL = "redis://127.0.0.1:6379/0"
LEAD = "cc-lead-" + "l" * 32
ADMIN = "cc-admin-" + "a" * 32
INTERNAL = "cc-internal-" + "i" * 32
#: Seconds a single request may take before it counts as a hang.
CLIENT_TIMEOUT = 30.0
SCALE = max(1, int(os.environ.get("CCPROXY_FUZZ_SCALE", "1")))
RANDOM = os.environ.get("CCPROXY_FUZZ_RANDOM") == "1"

pytestmark = [
    pytest.mark.timeout(300),
    # The explicit examples with 60 kB headers make reprs hypothesis finds large: that is the point.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


def fuzz(max_examples: int) -> settings:
    """Bounded: a fixed number of examples, a deadline per example well above the client timeout
    (the timeout is the hang check; the deadline only stops a runaway example)."""
    return settings(
        max_examples=max_examples * SCALE,
        deadline=timedelta(seconds=CLIENT_TIMEOUT * 2),
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# -- the running target ---------------------------------------------------------------------------

@dataclass
class Target:
    serve: Proc
    auth: Proc
    http: httpx.Client
    member_key: str
    member_id: str
    #: Permission requests pending for the member (created as a permissions replica would).
    pending: list[str]

    def callers(self) -> dict[str, dict[str, str]]:
        return {
            "anonymous": {},
            "wrong-x-api-key": {"x-api-key": "ccp_" + "w" * 40},
            "wrong-bearer": {"authorization": "Bearer not-a-key"},
            "bad-scheme": {"authorization": "Basic " + self.member_key},
            "member": {"x-api-key": self.member_key},
            "member-bearer": {"authorization": f"Bearer {self.member_key}"},
            "lead": {"authorization": f"Bearer {LEAD}"},
        }


def _create_pending(prefix: str, key_id: str, n: int) -> list[str]:
    async def create() -> list[str]:
        client = AsyncRedis.from_url(REDIS_URL)
        try:
            store = PermissionStore(client, prefix, PermissionsSettings(timeout_seconds=600))
            ids = []
            for i in range(n):
                ask = PermissionAsk(tool_name="Write", input={"file_path": f"fuzz-{i}.txt", "content": "x"},
                                    key_id=key_id, key_name="fuzz-member", title="fuzz")
                ids.append((await store.create(ask)).id)
            return ids
        finally:
            await client.aclose()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    prefix = f"test-fuzz-{secrets.token_hex(6)}:"
    config_dir = tmp / "claude"
    write_credentials(config_dir, fake_upstream.credentials())
    workspace = tmp / "workspace"
    workspace.mkdir()
    settings_env = {
        "REDIS__URL": REDIS_URL, "REDIS__KEY_PREFIX": prefix, "SECURITY__AUTH_TOKEN": LEAD,
        "AUTH__SECRET_BACKEND": "file",
        # SDK mode: the few valid runs (test_sdk_a_few_valid_runs) use the pinned Claude Code CLI.
        "CLAUDE__CLI_PATH": str(REPO_ROOT / "node_modules" / ".bin" / "claude"),
        "CLAUDE__WORKSPACE_ROOT": str(workspace), "CLAUDE__POLL_INTERVAL": "0.05",
    }
    env = isolated_env(tmp / "cli", fake_url=fake_upstream.url, claude_config_dir=config_dir, overrides=settings_env)
    done = run_ccproxy(["keys", "create", "--json", "--name", "fuzz-member", "--budget-usd", "1000"], env, tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    member = json.loads(done.stdout)
    started: list[Proc] = []
    http = httpx.Client(timeout=CLIENT_TIMEOUT)
    try:
        serve = launch_serve(tmp / "serve", fake_url=fake_upstream.url, claude_config_dir=config_dir,
                             env=settings_env, timeout=60)
        started.append(serve)
        port = free_port()
        auth_dir = tmp / "auth"
        auth_env = isolated_env(auth_dir, fake_url=fake_upstream.url, claude_config_dir=config_dir, overrides={
            **settings_env, "SECURITY__ADMIN_TOKEN": ADMIN, "SECURITY__INTERNAL_SECRET": INTERNAL,
            "SERVER__PORT": str(port),
        })
        auth = start_process([str(CCPROXY), "run", "auth"], url=f"http://127.0.0.1:{port}",
                             health_url=f"http://127.0.0.1:{port}/health", log_path=auth_dir / "auth.log",
                             env=auth_env, cwd=auth_dir, port=port, timeout=60)
        started.append(auth)
        pending = _create_pending(prefix, member["id"], 5)
        yield Target(serve, auth, http, member["key"], member["id"], pending)
    finally:
        http.close()
        for proc in started:
            proc.stop()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


# -- the property -----------------------------------------------------------------------------------

def send(target: Target, method: str, url: str, *, content: bytes | None = None,
         headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> httpx.Response:
    """One request; no answer within the client timeout is a hang, and a failure.

    A connection the server closed between two requests (uvicorn closes it after an error, and
    the pool may already have picked it) is tried once more on a new one; failing again is a
    failure of this request."""
    for attempt in (1, 2):
        try:
            return target.http.request(method, url, content=content, headers=headers, params=params)
        except httpx.TimeoutException as exc:
            raise AssertionError(f"{method} {url} hung: no answer within {CLIENT_TIMEOUT}s") from exc
        except httpx.TransportError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


#: uvicorn's answer to a request its HTTP parser refuses (a control character in a header).
PARSER_REFUSAL = "Invalid HTTP request received."


def error_format(path: str) -> str:
    return "openai" if path.endswith(("/chat/completions", "/responses")) else "anthropic"


def check(resp: httpx.Response, what: str = "") -> None:
    """Never a 5xx; an error body in the client's format."""
    path = resp.request.url.path
    detail = f"{resp.request.method} {path} {what} -> {resp.status_code}: {resp.text[:400]}"
    assert resp.status_code < 500, detail
    if resp.status_code < 400:
        return
    if resp.status_code == 400 and resp.text == PARSER_REFUSAL:
        return  # refused by the HTTP parser before any route saw it: no format to speak
    assert resp.headers.get("content-type", "").startswith("application/json"), detail
    body = resp.json()
    if error_format(path) == "openai":
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), detail
        assert isinstance(body["error"].get("message"), str) and isinstance(body["error"].get("type"), str), detail
    else:
        assert isinstance(body, dict) and body.get("type") == "error", detail
        assert isinstance(body.get("error"), dict), detail
        assert isinstance(body["error"].get("type"), str) and isinstance(body["error"].get("message"), str), detail


def peek_stream(target: Target, path: str, params: dict[str, str], hdrs: dict[str, str]) -> None:
    """An SSE endpoint (it never ends by itself): its status, and its first bytes when it opens."""
    try:
        with target.http.stream("GET", target.serve.url + path, params=params, headers=hdrs) as resp:
            if resp.status_code >= 400:
                resp.read()
                check(resp, f"{params}")
            else:
                assert resp.status_code == 200, f"GET {path} {params} -> {resp.status_code}"
                assert next(resp.iter_raw(), b""), f"GET {path} {params}: opened, then nothing"
    except httpx.TimeoutException as exc:
        raise AssertionError(f"GET {path} {params} hung") from exc


def still_healthy(target: Target) -> None:
    assert target.serve.alive(), target.serve.log_text()[-3000:]
    resp = send(target, "GET", target.serve.url + "/health")
    assert resp.status_code == 200, resp.text
    resp = send(target, "GET", target.auth.url + "/health")
    assert resp.status_code == 200, resp.text


callers = st.sampled_from(["anonymous", "wrong-x-api-key", "wrong-bearer", "bad-scheme", "member", "member-bearer",
                           "lead"])
#: Mostly authenticated: that is where the validation and forwarding layers are.
authed = st.sampled_from(["member", "member", "member", "member-bearer", "lead", "lead", "anonymous",
                          "wrong-x-api-key"])

API_ANTHROPIC = ["/api/v1/messages", "/api/v1/messages/count_tokens"]
API_OPENAI = ["/api/v1/chat/completions", "/api/v1/responses"]
SDK_PATHS = {
    "anthropic": ["/sdk/v1/messages", "/sdk/fuzz-session/v1/messages"],
    "chat": ["/sdk/v1/chat/completions", "/sdk/fuzz-session/v1/chat/completions"],
    "responses": ["/sdk/v1/responses", "/sdk/fuzz-session/v1/responses"],
}
ALL_POSTS = [*API_ANTHROPIC, *API_OPENAI, *(p for paths in SDK_PATHS.values() for p in paths)]


def post_json(target: Target, path: str, body: Any, caller: str, extra: dict[str, str] | None = None
              ) -> httpx.Response:
    content = encode(body).encode()
    hdrs = {"content-type": "application/json", **target.callers()[caller], **(extra or {})}
    resp = send(target, "POST", target.serve.url + path, content=content, headers=hdrs)
    check(resp, f"as {caller}")
    return resp


# -- API mode: the validation layer and what passes through to the (fake) upstream -------------------

def test_api_messages_any_body(target: Target) -> None:
    @fuzz(120)
    @given(path=st.sampled_from(API_ANTHROPIC), body=mutated_bodies("anthropic"), caller=authed,
           extra=headers)
    @example(path="/api/v1/messages", body={"model": "m", "max_tokens": True, "messages": []}, caller="member",
             extra={})
    @example(path="/api/v1/messages", body={"model": "m", "max_tokens": 1, "messages": [], "stream": True},
             caller="member", extra={"anthropic-beta": "a" * 8000})
    @example(path="/api/v1/messages", body={"model": MODEL, "max_tokens": 16, "tools": True,
                                            "messages": [{"role": "user", "content": "x"}]},
             caller="member", extra={})  # passed through: the fake upstream crashed on it (a 500 relayed)
    def run(path: str, body: Any, caller: str, extra: dict[str, str]) -> None:
        post_json(target, path, body, caller, extra)

    run()
    still_healthy(target)


def test_openai_any_body(target: Target) -> None:
    @fuzz(120)
    @given(data=st.data(), caller=authed)
    def run(data: st.DataObject, caller: str) -> None:
        path = data.draw(st.sampled_from(API_OPENAI))
        kind = "chat" if path.endswith("/chat/completions") else "responses"
        post_json(target, path, data.draw(mutated_bodies(kind)), caller)

    run()
    still_healthy(target)


def test_deep_nesting_everywhere(target: Target) -> None:
    """Nesting to 1,500 levels at the top, in a known field and in a message's content."""
    @fuzz(40)
    @given(path=st.sampled_from(ALL_POSTS), depth=depths, kind=st.sampled_from(["list", "dict", "blocks"]),
           where=st.sampled_from(["top", "field", "content", "options"]), caller=st.sampled_from(["member", "lead"]))
    @example(path="/api/v1/messages", depth=254, kind="list", where="top", caller="member")  # orjson's dumps limit
    @example(path="/api/v1/messages/count_tokens", depth=300, kind="dict", where="content", caller="lead")
    def run(path: str, depth: int, kind: str, where: str, caller: str) -> None:
        nested = deep(depth, kind)
        fmt = "chat" if "chat" in path else "responses" if "responses" in path else "anthropic"
        body: dict[str, Any] = (
            {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]} if fmt != "responses"
            else {"model": MODEL, "input": "x"}
        )
        if where == "top":
            body = {"nested": nested, **body}
        elif where == "field":
            body["metadata" if fmt != "chat" else "user"] = nested
        elif where == "content":
            body["messages" if fmt != "responses" else "input"] = [{"role": "user", "content": nested}]
        else:
            body["claude_options"] = {"allowed_tools": nested}
        if path.startswith("/sdk"):
            body["model"] = None  # never start Claude Code: the validation layer is what is fuzzed
        post_json(target, path, body, caller)

    for depth in (256, 1024, 1500):  # a bare deep array, not an object
        post_json(target, "/api/v1/messages", deep(depth, "list"), "member")
    run()
    still_healthy(target)


def test_raw_bodies_content_types_and_headers(target: Target) -> None:
    """Not JSON, not UTF-8, not an object, the wrong content type, huge headers: on every POST."""
    @fuzz(150)
    @given(path=st.sampled_from(ALL_POSTS), body=raw_bodies, content_type=st.sampled_from(CONTENT_TYPE_LIST),
           caller=callers, extra=headers)
    @example(path="/api/v1/messages", body=b'{"model":"m","max_tokens":NaN,"messages":[]}',
             content_type="application/json", caller="member", extra={})
    @example(path="/api/v1/chat/completions", body=b"\xff\xfe\xfd", content_type="application/json",
             caller="member", extra={"x-fuzz": "x" * 60_000})
    def run(path: str, body: bytes, content_type: str, caller: str, extra: dict[str, str]) -> None:
        hdrs = {**target.callers()[caller], **extra}
        if content_type:
            hdrs["content-type"] = content_type
        check(send(target, "POST", target.serve.url + path, content=body, headers=hdrs), f"as {caller}")

    run()
    still_healthy(target)


# -- SDK mode: only what the validation layer refuses (anything valid starts Claude Code) -----------

def test_sdk_validation_layer(target: Target) -> None:
    @fuzz(80)
    @given(data=st.data(), kind=st.sampled_from(["anthropic", "chat", "responses"]), caller=authed)
    def run(data: st.DataObject, kind: str, caller: str) -> None:
        path = data.draw(st.sampled_from(SDK_PATHS[kind]))
        if "fuzz-session" in path:
            session = data.draw(st.one_of(url_texts, st.sampled_from(["..", "%2e%2e", "a/../b", "x" * 3000])))
            path = path.replace("fuzz-session", urllib.parse.quote(session, safe="") or "s")
        body = data.draw(invalid_bodies(kind))
        extra = {"x-claude-session-id": data.draw(header_values)}
        post_json(target, path, body, caller, extra)

    run()
    still_healthy(target)


@pytest.mark.claude_cli
def test_sdk_a_few_valid_runs(target: Target) -> None:
    """A handful of valid runs (each starts Claude Code), carrying what a validator does not read:
    unknown fields, odd metadata, a session named with dots, a right-to-left mark and a NUL."""
    junk = {"x-fuzz": {"deep": deep(200, "dict")}, "metadata": {"user_id": "\u202e" * 100}}
    runs = [
        ("/sdk/..%E2%80%AE%00%25/v1/messages", {**junk, "model": MODEL, "max_tokens": 32,
                                             "messages": [{"role": "user", "content": "hi"}]}),
        ("/sdk/v1/chat/completions", {**junk, "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                      "stream": True}),
        ("/sdk/v1/responses", {**junk, "model": MODEL, "input": "hi", "max_output_tokens": 32}),
    ]
    for path, body in runs:
        resp = post_json(target, path, body, "member")
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text[:300]}"
    still_healthy(target)


# -- any method on any route ----------------------------------------------------------------------------

ROUTES = [*ALL_POSTS, "/api/v1/models", "/sdk/v1/models", "/api/status", "/sdk/status", "/health", "/api", "/sdk",
          "/logs/query", "/logs/usage", "/logs/status", "/permissions", "/permissions/x", "/permissions/x/respond",
          "/permissions/ui", "/dashboard", "/api/v1/nope", "/api/v1/messages/", "/nope", "/", "//api/v1/messages"]


def test_any_method_on_any_route(target: Target) -> None:
    """The wrong method (405), no such route (404), a trailing slash: still the client's format."""
    @fuzz(60)
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
           path=st.sampled_from(ROUTES), caller=callers)
    def run(method: str, path: str, caller: str) -> None:
        resp = send(target, method, target.serve.url + path, headers=target.callers()[caller],
                    content=b"{}" if method in ("POST", "PUT", "PATCH") else None)
        if method == "HEAD":
            assert resp.status_code < 500, f"HEAD {path} -> {resp.status_code}"
        else:
            check(resp, f"as {caller}")

    run()
    still_healthy(target)


# -- GET endpoints, permissions, logs ------------------------------------------------------------------

GETS = ["/api/v1/models", "/api/models", "/sdk/v1/models", "/api/status", "/sdk/status", "/health",
        "/logs/status", "/permissions", "/metrics"]


def test_get_endpoints_with_any_query_and_headers(target: Target) -> None:
    @fuzz(60)
    @given(path=st.sampled_from(GETS), params=st.dictionaries(url_texts, url_texts, max_size=3), caller=callers,
           extra=headers)
    def run(path: str, params: dict[str, str], caller: str, extra: dict[str, str]) -> None:
        hdrs = {**target.callers()[caller], **extra}
        check(send(target, "GET", target.serve.url + path, params=params, headers=hdrs), f"as {caller}")
        if path == "/permissions":
            peek_stream(target, "/permissions/stream", params, hdrs)

    run()
    still_healthy(target)


def test_permissions_get_and_respond(target: Target) -> None:
    """Any id in the path; any body on a request that is really pending for the member."""
    @fuzz(80)
    @given(data=st.data(), caller=authed, real=st.booleans(),
           body=st.one_of(
               raw_bodies,
               st.builds(lambda d: encode(d).encode(), st.fixed_dictionaries(
                   {"behavior": st.one_of(st.sampled_from(["allow", "deny"]), any_value)},
                   optional={"updated_input": any_value, "updatedInput": any_value, "message": any_value})),
           ))
    def run(data: st.DataObject, caller: str, real: bool, body: bytes) -> None:
        request_id = data.draw(st.sampled_from(target.pending)) if real else data.draw(url_texts)
        url = target.serve.url + "/permissions/" + urllib.parse.quote(request_id, safe="")
        hdrs = target.callers()[caller]
        check(send(target, "GET", url, headers=hdrs), f"as {caller}")
        check(send(target, "POST", url + "/respond", content=body,
                   headers={**hdrs, "content-type": "application/json"}), f"as {caller}")

    run()
    still_healthy(target)


def test_logs_query_and_usage(target: Target) -> None:
    @fuzz(100)
    @given(path=st.sampled_from(["/logs/query", "/logs/usage", "/logs/status"]), params=logs_params,
           caller=st.sampled_from(["member", "lead", "member", "anonymous"]))
    @example(path="/logs/query", params={"limit": "²"}, caller="lead")
    @example(path="/logs/query", params={"status": "²"}, caller="lead")
    @example(path="/logs/query", params={"since": "1e20"}, caller="member")
    @example(path="/logs/usage", params={"until": "nan"}, caller="member")
    @example(path="/logs/usage", params={"group_by": "bogus", "bucket": "fortnight"}, caller="lead")
    @example(path="/logs/status", params={"replay": "²"}, caller="member")
    @example(path="/logs/query", params={"until": "0001-01-01"}, caller="member")
    @example(path="/logs/query", params={"since": "0001-01-01"}, caller="member")  # was a 503 from ClickHouse
    @example(path="/logs/query", params={"cursor": "Njc3Njg0MzY0MTE0MzY0MTY0MDA"}, caller="member")  # a huge time
    @example(path="/logs/usage", params={"since": "1800-01-01", "until": "9999-12-31T23:59:59Z"}, caller="lead")
    def run(path: str, params: dict[str, str], caller: str) -> None:
        hdrs = target.callers()[caller]
        check(send(target, "GET", target.serve.url + path, params=params, headers=hdrs), f"{params} as {caller}")
        peek_stream(target, "/logs/stream", params, hdrs)

    run()
    still_healthy(target)


# -- the admin API (auth service) ------------------------------------------------------------------

numbers = st.one_of(st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_FLOATS), st.booleans(), texts, st.none(),
                    st.sampled_from(["NaN", "Infinity", "1e308", "-0", "5"]))
key_bodies = st.fixed_dictionaries(
    # Mostly names the API accepts, so the limits behind them are what gets fuzzed.
    {"name": st.one_of(st.builds("fz-{}".format, st.integers(0, 10**9)), st.builds("fz-{}".format, texts),
                       any_value)},
    optional={"accounts": st.one_of(st.lists(texts, max_size=3), any_value), "rpm": numbers, "tpm": numbers,
              "budget_usd": numbers, "period": st.one_of(st.sampled_from(["day", "week", "month", "year"]), any_value),
              "expires_at": numbers, "bogus": any_value},
)


def test_admin_keys(target: Target) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    key_json = st.builds(lambda d: encode(d).encode(), key_bodies)

    @fuzz(80)
    @given(body=st.one_of(key_json, key_json, key_json, raw_bodies),
           who=st.sampled_from(["admin", "admin", "admin", "nobody", "member"]), revoke=url_texts,
           query=st.dictionaries(st.sampled_from(["all", "x"]), url_texts, max_size=2))
    @example(body=b"{}", who="admin", revoke="/0", query={})  # no such route: JSON 404, was plain text
    @example(body=b'{"name": "fz-huge", "budget_usd": 1e308}', who="admin", revoke="fz-huge", query={})
    @example(body=b'{"name": "fz-nan", "budget_usd": "NaN"}', who="admin", revoke="fz-nan", query={})
    def run(body: bytes, who: str, revoke: str, query: dict[str, str]) -> None:
        hdrs = {"admin": admin, "nobody": {}, "member": {"authorization": f"Bearer {target.member_key}"}}[who]
        url = target.auth.url + "/admin/keys"
        check(send(target, "POST", url, content=body, headers={**hdrs, "content-type": "application/json"}),
              f"as {who}")
        check(send(target, "GET", url, params=query, headers=hdrs), f"as {who}")
        check(send(target, "DELETE", url + "/" + urllib.parse.quote(revoke, safe=""), headers=hdrs), f"as {who}")

    run()
    still_healthy(target)



def test_auth_service_trailing_slash_is_no_redirect(target: Target) -> None:
    """A trailing slash on the auth service is a JSON 404, not a 307 whose absolute location
    echoes the Host header (found by the admin fuzz: ``DELETE /admin/keys/``)."""
    admin = {"authorization": f"Bearer {ADMIN}", "host": "evil.example"}
    for method, path in (("DELETE", "/admin/keys/"), ("GET", "/admin/keys/"), ("GET", "/health/")):
        resp = send(target, method, target.auth.url + path, headers=admin)
        assert resp.status_code == 404, (method, path, resp.status_code, resp.headers)
        assert "evil.example" not in resp.headers.get("location", "") + resp.text
        check(resp, f"{method} {path}")
