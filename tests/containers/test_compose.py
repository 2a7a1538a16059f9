"""compose.yaml for real: every image built from the repository's Dockerfile, the whole stack run
by a container engine (podman + podman-compose), driven through Traefik's published port the way
a team uses it. Only the Anthropic API is faked (tests/fake_upstream, on the host, reached by the
containers at host.containers.internal).

Heavy (image builds, a dozen containers): runs when ``CCPROXY_COMPOSE_TEST=1`` (``make
compose-test``, and ``make test`` runs it after the rest). Not run: Grafana (no image or package
can be had here; its dashboards' SQL is run by tests/analytics/test_grafana_dashboards.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.containers import harness
from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import start_process

pytestmark = [
    pytest.mark.skipif(os.environ.get("CCPROXY_COMPOSE_TEST") != "1",
                       reason="the container test runs with CCPROXY_COMPOSE_TEST=1 (make compose-test)"),
    # The first test also waits for the images to build and the stack to start.
    pytest.mark.timeout(3600),
]

ROOT = harness.ROOT
MODEL = "claude-sonnet-4-6"
PROJECT = "ccproxy-ctest"
#: The uid a user who ran `sudo make env` has (init-env as root takes SUDO_UID).
HOST_UID = 4242
CCPROXY_SERVICES = ["gateway", "api-forwarder", "auth", "permissions", "sdk-worker", "analytics"]
SECRET_NAMES = ["SECURITY__AUTH_TOKEN", "SECURITY__ADMIN_TOKEN", "SECURITY__METRICS_TOKEN", "CLICKHOUSE_PASSWORD",
                "GRAFANA_CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "SECURITY__INTERNAL_SECRET", "REDIS_PASSWORD"]


def set_env(text: str, **values: str) -> str:
    for name, value in values.items():
        line = f"{name}={value}"
        text, n = re.subn(rf"^#? ?{name}=.*$", line, text, count=1, flags=re.M)
        if not n:
            text += line + "\n"
    return text


def env_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#") and "=" in line)


class Deployment:
    """The running stack, what the test set it up with, and the clients of a team member."""

    def __init__(self, stack: harness.Stack, env: dict[str, str], fake: FakeUpstream, credentials: dict[str, Any],
                 timings: dict[str, float]) -> None:
        self.stack, self.env, self.fake, self.credentials, self.timings = stack, env, fake, credentials, timings
        self.token = env["SECURITY__AUTH_TOKEN"]

    @property
    def url(self) -> str:
        return self.stack.url

    def anthropic(self, key: str | None = None, mode: str = "api") -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=f"{self.url}/{mode}", api_key=key or self.token, max_retries=0, timeout=120)

    def openai(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/api/v1", api_key=key or self.token, max_retries=0, timeout=120)

    def ccproxy(self, service: str, *args: str) -> str:
        return self.stack.exec(service, "ccproxy", *args).stdout

    def logs_query(self, **params: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/logs/query", params=params, headers={"x-api-key": self.token}, timeout=30)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["data"])

    def access_row(self, upstream_request_id: str, timeout: float = 60) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            rows = self.logs_query(limit="200")
            return next((r for r in rows if r.get("upstream_request_id") == upstream_request_id), None)
        return harness.wait_for(find, timeout, f"the access-log row of {upstream_request_id}")  # type: ignore[no-any-return]


def up_and_ready(stack: harness.Stack, credentials: dict[str, Any], token: str) -> None:
    services = [s for s in harness.load_compose()["services"] if s not in harness.NOT_RUN]
    stack.up(services)
    # podman 4.3 cannot evaluate `condition: service_healthy`: wait with each container's own check.
    stack.wait_healthy(["redis", "clickhouse", "auth"], timeout=300)
    if credentials:
        stack.exec("auth", "sh", "-c", "umask 077 && cat > /data/claude/.credentials.json",
                   input=json.dumps({"claudeAiOauth": credentials}))
    stack.wait_healthy([*CCPROXY_SERVICES, "traefik"], timeout=300)
    client = anthropic.Anthropic(base_url=f"{stack.url}/api", api_key=token, max_retries=0, timeout=30)

    def answers() -> bool:
        msg = client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "ready?"}])
        return msg.content[0].text == "Echo: ready?"  # type: ignore[union-attr]
    harness.wait_for(answers, 180, "a first answer through Traefik", interval=1)


#: Set when the stack could not be started: every test then fails at once with that reason
#: (pytest would otherwise run the module fixture's set-up again for each test).
SETUP_FAILED: list[str] = []


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    if SETUP_FAILED:
        pytest.fail(f"the stack did not start: {SETUP_FAILED[0]}", pytrace=False)
    try:
        yield from _deployment()
    except BaseException as exc:
        SETUP_FAILED.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        raise


def _deployment() -> Iterator[Deployment]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    work = harness.CACHE / "run"
    # CCPROXY_COMPOSE_REUSE=1 (while writing tests): the stack a previous run kept
    # (CCPROXY_COMPOSE_KEEP=1) is used as it is, with the fake upstream on the same port.
    reuse = os.environ.get("CCPROXY_COMPOSE_REUSE") == "1" and (work / ".env").is_file()
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        fake_port = free_port("0.0.0.0")  # the containers reach it through the bridge
    else:
        fake_port = int(env_values((work / ".env").read_text())["ANTHROPIC__BASE_URL"].rsplit(":", 1)[1])
    fake_proc = start_process(
        [sys.executable, "-m", "tests.fake_upstream", "--host", "0.0.0.0", "--port", str(fake_port),
         "--state-file", str(work / "fake-state.json")],
        url=f"http://127.0.0.1:{fake_port}", health_url=f"http://127.0.0.1:{fake_port}/_fake/health",
        log_path=work / "fake_upstream.log", cwd=ROOT, port=fake_port,
    )
    fake = FakeUpstream(fake_proc)
    stack: harness.Stack | None = None
    try:
        if reuse:
            env = env_values((work / ".env").read_text())
            stack = harness.Stack(work, PROJECT, work / ".env", work / "compose.override.yaml",
                                  int(env["CCPROXY_PORT"]))
            yield Deployment(stack, env, fake, json.loads((work / "credentials.json").read_text()), {"up": 1.0})
            return
        compose = harness.load_compose()
        images = harness.base_images(compose)
        timings["base images"] = time.monotonic() - started
        override = work / "compose.override.yaml"
        override.write_text(harness.override_yaml(compose, images))
        env_file = work / ".env"
        made = subprocess.run(
            [sys.executable, "-m", "ccproxy_core", "init-env", "--example", str(ROOT / ".env.example"),
             "--output", str(env_file)],
            cwd=work, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "HOME": str(work), "SUDO_UID": str(HOST_UID), "SUDO_GID": str(HOST_UID)},
        )
        assert made.returncode == 0, made.stderr
        # As `make env` run by the host user leaves them: the sdk-worker's secret files are owned
        # by the uid Claude Code runs as; only the directory they are mounted in keeps it out.
        secrets_dir = work / "secrets"
        for path in (secrets_dir, *secrets_dir.iterdir()):
            os.chown(path, HOST_UID, HOST_UID)
        port = free_port()
        fake_url = f"http://host.containers.internal:{fake_port}"
        env_file.write_text(set_env(
            env_file.read_text(), CCPROXY_BIND="127.0.0.1", CCPROXY_PORT=str(port), ANTHROPIC__BASE_URL=fake_url,
            OAUTH__TOKEN_URL=f"{fake_url}/v1/oauth/token", ANALYTICS__RETENTION_DAYS="30",
            SECURITY__ADMIN_TOKEN="admin-" + uuid.uuid4().hex,
        ))
        env = env_values(env_file.read_text())
        stack = harness.Stack(work, PROJECT, env_file, override, port)
        stack.compose("down", "-v", check=False, timeout=600)
        t = time.monotonic()
        stack.build([name for name, svc in compose["services"].items() if "build" in svc])
        timings["build"] = time.monotonic() - t
        t = time.monotonic()
        credentials = fake.credentials()
        (work / "credentials.json").write_text(json.dumps(credentials))
        up_and_ready(stack, credentials, env["SECURITY__AUTH_TOKEN"])
        timings["up"] = time.monotonic() - t
        harness.log(f"timings: {timings}")
        yield Deployment(stack, env, fake, credentials, timings)
    finally:
        if stack is not None:
            if os.environ.get("CCPROXY_COMPOSE_KEEP") != "1" and not reuse:
                stack.compose("down", "-v", check=False, timeout=600)
        fake_proc.stop()


# --- the public API through Traefik ---------------------------------------------------------------

def test_anthropic_sdk_plain_streamed_and_tools(deployment: Deployment) -> None:
    client = deployment.anthropic()
    msg = client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hello"}])
    assert msg.content[0].text == "Echo: hello"  # type: ignore[union-attr]
    with client.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "streamed"}]) as s:
        assert s.get_final_text() == "Echo: streamed"
    tools: Any = [{"name": "get_weather", "description": "Weather of a city",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}}]
    msg = client.messages.create(model=MODEL, max_tokens=200, tools=tools,
                                 messages=[{"role": "user", "content": "weather? [[fake:tool]]"}])
    assert msg.stop_reason == "tool_use"
    use = next(b for b in msg.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input


def test_openai_sdk_plain_streamed_and_tools(deployment: Deployment) -> None:
    client = deployment.openai()
    done = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi openai"}])
    assert done.choices[0].message.content == "Echo: hi openai"
    chunks = client.chat.completions.create(model=MODEL, stream=True,
                                            messages=[{"role": "user", "content": "streamed openai"}])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: streamed openai"
    tools: Any = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]}}}]
    done = client.chat.completions.create(model=MODEL, tools=tools,
                                          messages=[{"role": "user", "content": "weather [[fake:tool]]"}])
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert done.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)


def refused(deployment: Deployment, key: str) -> bool:
    """Whether ``key`` is refused as unknown (401) now."""
    try:
        deployment.anthropic(key).messages.create(model=MODEL, max_tokens=5,
                                                  messages=[{"role": "user", "content": "x"}])
    except anthropic.AuthenticationError:
        return True
    return False


# --- member keys ----------------------------------------------------------------------------------

def test_member_key_made_with_exec_works_and_a_revoked_one_stops(deployment: Deployment) -> None:
    name = f"member-{uuid.uuid4().hex[:6]}"
    made = json.loads(deployment.ccproxy("auth", "keys", "create", "--name", name, "--json"))
    key = made["key"]

    def works() -> bool:
        msg = deployment.anthropic(key).messages.create(model=MODEL, max_tokens=20,
                                                        messages=[{"role": "user", "content": "member"}])
        return msg.content[0].text == "Echo: member"  # type: ignore[union-attr]
    # The gateway caches whether any key exists for SECURITY__KEY_CACHE_SECONDS: the very first
    # key of a deployment may take that long to be accepted.
    harness.wait_for(works, 30, "the new member key to work")
    deployment.ccproxy("auth", "keys", "revoke", made["id"])
    # The gateway caches key checks for SECURITY__KEY_CACHE_SECONDS.
    harness.wait_for(lambda: refused(deployment, key), 30, "the revoked key to be refused")


def test_the_lead_runs_a_key_from_the_console_and_the_member_sees_it_on_me(deployment: Deployment) -> None:
    """/admin and /me through Traefik (auth serves both): sign in with the admin token (cookie +
    CSRF), make a key, the member uses it and sees their own row on /me's reads, a budget cut to
    nothing stops it (402), revoking stops it (401)."""
    assert "ccproxy console" in httpx.get(deployment.url + "/admin", timeout=10).text
    with httpx.Client(base_url=deployment.url, timeout=30) as lead:
        signed = lead.post("/admin/session", json={"token": deployment.env["SECURITY__ADMIN_TOKEN"]})
        assert signed.status_code == 200, signed.text
        csrf = {"x-csrf-token": signed.json()["csrf"]}
        assert lead.post("/admin/keys", json={"name": "no-csrf"}).status_code == 403
        made = lead.post("/admin/keys", json={"name": f"console-{uuid.uuid4().hex[:6]}"}, headers=csrf)
        assert made.status_code == 201, made.text
        key, key_id = made.json()["key"], made.json()["id"]

        def works() -> bool:
            try:
                msg = deployment.anthropic(key).messages.create(model=MODEL, max_tokens=20,
                                                                messages=[{"role": "user", "content": "console"}])
            except anthropic.AuthenticationError:
                return False  # the gateway's "any keys?" cache, on a deployment's first key
            return msg.content[0].text == "Echo: console"  # type: ignore[union-attr]
        harness.wait_for(works, 30, "the console's key to work")

        with httpx.Client(base_url=deployment.url, timeout=30) as member:
            assert member.post("/me/session", json={"key": key}).status_code == 200
            assert member.get("/me/state").json()["name"].startswith("console-")

            def own_rows() -> list[dict[str, Any]] | None:
                rows = member.get("/logs/query", params={"limit": "50"}).json()["data"]
                return rows or None
            rows = harness.wait_for(own_rows, 60, "the member's own access-log row on /me")
            assert {row["key_id"] for row in rows} == {key_id}
            assert member.get("/admin/keys").status_code == 401  # a member session is no admin one

        cut = lead.patch(f"/admin/keys/{key_id}", json={"budget_usd": 0.000001}, headers=csrf)
        assert cut.status_code == 200, cut.text

        def over_budget() -> bool:
            try:
                deployment.anthropic(key).messages.create(model=MODEL, max_tokens=5,
                                                          messages=[{"role": "user", "content": "x"}])
            except anthropic.APIStatusError as exc:
                return exc.status_code == 402
            return False
        harness.wait_for(over_budget, 30, "the cut budget to refuse the key")
        assert lead.delete(f"/admin/keys/{key_id}", headers=csrf).status_code == 200
        harness.wait_for(lambda: refused(deployment, key), 30, "the revoked key to be refused")


# --- secrets and settings of the sdk-worker -------------------------------------------------------

def test_sdk_worker_environment_holds_no_ccproxy_secret(deployment: Deployment) -> None:
    """Neither `exec sdk-worker env` nor the container's own environment (its PID 1's) holds a
    secret: the worker's two (internal secret, Redis password) are files (compose `secrets:`)."""
    env = deployment.stack.exec("sdk-worker", "env").stdout
    init_env = deployment.stack.exec("sdk-worker", "cat", "/proc/1/environ").stdout.replace("\0", "\n")
    assert "CCPROXY_SECRETS_DIR=/etc/ccproxy/secrets" in init_env  # the right process was read
    for name in SECRET_NAMES:
        value = deployment.env.get(name)
        assert value, name  # init-env made every one
        for seen in (env, init_env):
            assert f"{name}=" not in seen, name
            assert value not in seen, name
    # What Claude Code gets (the worker scrubs every setting from its own environment): checked
    # in the SDK test below, through a Bash tool run.


# --- /metrics on the LAN, the client's address ------------------------------------------------------

def test_metrics_through_traefik_need_the_token(deployment: Deployment) -> None:
    for path in ("/metrics", "//metrics", "/METRICS", "/metrics/"):
        resp = httpx.get(deployment.url + path, timeout=10)
        assert resp.status_code in (401, 403, 404), (path, resp.status_code)
        assert "ccproxy_" not in resp.text
    member = httpx.get(deployment.url + "/metrics", headers={"x-api-key": deployment.token}, timeout=10)
    assert member.status_code == 404
    scrape = httpx.get(deployment.url + "/metrics", timeout=10,
                       headers={"authorization": f"Bearer {deployment.env['SECURITY__METRICS_TOKEN']}"})
    assert scrape.status_code == 200 and "ccproxy_requests_total" in scrape.text


def container_ip(deployment: Deployment, service: str) -> set[str]:
    out = harness.run(["podman", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                       deployment.stack.container(service)]).stdout
    return {n["IPAddress"] for n in json.loads(out).values()}


def test_access_log_row_in_clickhouse_with_the_clients_address(deployment: Deployment) -> None:
    client = deployment.anthropic()
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "logged"}],
        extra_headers={"x-forwarded-for": "203.0.113.9"})  # a client's own claim is not believed
    request_id = raw.headers["request-id"]
    row = deployment.access_row(request_id)
    assert row["status"] == 200 and row["mode"] == "api" and row["model_requested"] == MODEL
    traefik = container_ip(deployment, "traefik")
    assert row["client_addr"] and row["client_addr"] not in traefik, (row["client_addr"], traefik)
    assert row["client_addr"] != "203.0.113.9"
    # The host, as the compose network sees it: loopback or the network's gateway address.
    gateways = {n["Gateway"] for n in json.loads(harness.run(
        ["podman", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
         deployment.stack.container("traefik")]).stdout).values()}
    assert row["client_addr"] in {"127.0.0.1", *gateways}, (row["client_addr"], gateways)


# --- SDK mode: Claude Code in the sdk-worker container, permission prompts -------------------------

def write_prompt(path: str, content: str) -> str:
    query = urllib.parse.urlencode({"file_path": path, "content": content})
    return f"please write the file [[fake:call=Write?{query}]]"


def texts(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


class Run:
    """An SDK-mode request in a thread, so the test can decide while it waits."""

    def __init__(self, deployment: Deployment, key: str, prompt: str) -> None:
        client = deployment.anthropic(key, mode="sdk")
        self.pool = ThreadPoolExecutor(1)
        self.future: Future[Any] = self.pool.submit(
            client.messages.create, model=MODEL, max_tokens=200, messages=[{"role": "user", "content": prompt}])

    def result(self) -> Any:
        try:
            return self.future.result(180)
        finally:
            self.pool.shutdown()


def stream_until(deployment: Deployment, key: str, marker: str, timeout: float = 120) -> dict[str, Any]:
    """Follow /permissions/stream as the member until a request mentioning ``marker`` shows up."""
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", f"{deployment.url}/permissions/stream", headers={"x-api-key": key},
                      timeout=httpx.Timeout(10, read=timeout)) as resp:
        assert resp.status_code == 200, resp.read()
        event = ""
        for line in resp.iter_lines():
            if time.monotonic() > deadline:
                break
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and marker in line:
                data = json.loads(line.split(":", 1)[1])
                request = data.get("request", data)
                if event in ("request", "permission_request", "created", "") or "tool_name" in request:
                    return request  # type: ignore[no-any-return]
    raise AssertionError(f"no permission request about {marker} on /permissions/stream")


def respond(deployment: Deployment, key: str, request_id: str, body: dict[str, Any]) -> None:
    resp = httpx.post(f"{deployment.url}/permissions/{request_id}/respond", json=body,
                      headers={"x-api-key": key}, timeout=30)
    assert resp.status_code == 200, resp.text


def asked(deployment: Deployment, member: str, prompt: str, marker: str) -> tuple[Run, dict[str, Any]]:
    """Start an SDK run of ``prompt`` and wait for its permission request (the one naming
    ``marker``) on the member's /permissions/stream: the run, waiting, and the request."""
    with ThreadPoolExecutor(1) as pool:
        seen = pool.submit(stream_until, deployment, member, marker)
        run = Run(deployment, member, prompt)
        return run, seen.result(150)


def workspace_stat(deployment: Deployment, path: str) -> tuple[int, str] | None:
    out = deployment.stack.exec("sdk-worker", "sh", "-c", f"stat -c %u {path} && cat {path}", check=False)
    if out.returncode != 0:
        return None
    uid, _, content = out.stdout.partition("\n")
    return int(uid), content


@pytest.fixture(scope="module")
def member(deployment: Deployment) -> str:
    made = json.loads(deployment.ccproxy("auth", "keys", "create", "--name", f"sdk-{uuid.uuid4().hex[:6]}", "--json"))
    return str(made["key"])


def test_sdk_write_approved_lands_in_the_workspace_as_the_host_user(deployment: Deployment, member: str) -> None:
    name = f"approved-{uuid.uuid4().hex[:6]}.txt"
    path = f"/workspace/{name}"
    run, request = asked(deployment, member, write_prompt(path, "hello from the container"), name)
    assert request["tool_name"] == "Write"
    assert workspace_stat(deployment, path) is None  # nothing before the decision
    respond(deployment, member, request["id"], {"behavior": "allow"})
    run.result()
    stat = workspace_stat(deployment, path)
    assert stat == (int(deployment.env["CCPROXY_UID"]), "hello from the container"), stat
    assert int(deployment.env["CCPROXY_UID"]) == (HOST_UID if os.getuid() == 0 else os.getuid())


def test_sdk_write_denied_writes_nothing(deployment: Deployment, member: str) -> None:
    name = f"denied-{uuid.uuid4().hex[:6]}.txt"
    path = f"/workspace/{name}"
    run, request = asked(deployment, member, write_prompt(path, "must not exist"), name)
    respond(deployment, member, request["id"], {"behavior": "deny", "message": "not here"})
    answer = run.result()
    assert "not here" in texts(answer)
    assert workspace_stat(deployment, path) is None


def test_claude_code_sees_no_ccproxy_setting(deployment: Deployment, member: str) -> None:
    """A Bash tool run prints the agent's environment: nothing of ccproxy's is in it."""
    marker = f"envcheck-{uuid.uuid4().hex[:6]}"
    command = f"echo {marker}; env"
    prompt = f"show env [[fake:call=Bash?{urllib.parse.urlencode({'command': command})}]]"
    run, request = asked(deployment, member, prompt, marker)
    respond(deployment, member, request["id"], {"behavior": "allow"})
    answer = texts(run.result())
    assert marker in answer, answer[-2000:]
    assert "SECURITY__" not in answer and deployment.env["SECURITY__INTERNAL_SECRET"] not in answer
    assert "REDIS__URL" not in answer and "SERVICES__" not in answer and "CCPROXY_SECRETS_DIR" not in answer


def test_claude_code_cannot_reach_the_worker_its_secrets_or_redis(deployment: Deployment, member: str) -> None:
    """Think like the agent: a Bash tool run tries the worker's environment (/proc/1, the worker's
    process), signals it, reads the secret files, speaks to Redis without a password and scrapes
    the gateway's /metrics (every key's cost). Each is refused; what the tool printed comes back to
    the (fake) upstream as the tool result."""
    marker = f"reach-{uuid.uuid4().hex[:6]}"
    secrets_dir = "/etc/ccproxy/secrets"
    redis = ("import socket; s = socket.create_connection((\"redis\", 6379), 5); s.sendall(b\"PING\\r\\n\"); "
             "print(\"redis said\", s.recv(200))")
    steps = [
        f"echo {marker}", "id",
        # The worker's process, by its command line (readable by all), not PID 1 (the init
        # process); [e] keeps this very command out. (No grep: Claude Code's shell may swap in rg.)
        "W=; for p in /proc/[0-9]*; do [ $p = /proc/1 ] && continue; case \"$(tr '\\0' ' ' < $p/cmdline)\" in "
        "*'bin/ccproxy run sdk-work'[e]'r'*) W=${p#/proc/};; esac; done",
        "echo worker=$W", "cat /proc/1/environ", "cat /proc/$W/environ", "head -c 64 /proc/$W/mem", "kill -0 $W",
        f"ls {secrets_dir}", f"cat {secrets_dir}/security__internal_secret {secrets_dir}/redis__url",
        f"python3 -c '{redis}'",
        # Every key's tokens and cost, on the gateway's own port (no Traefik in between).
        "python3 -c 'import urllib.request as r; print(\"metrics said\", r.urlopen(\"http://gateway:8000/metrics\").status)'",
        # An upstream credential: none in Claude Code's config directory, none mounted, none in its
        # environment; its one key is its run's token, which the gateway refuses outside /api.
        'echo "config=$CLAUDE_CONFIG_DIR"', 'ls -A "$CLAUDE_CONFIG_DIR" /data/claude', 'echo "key=$ANTHROPIC_API_KEY"',
        "python3 -c 'import os, urllib.request as r, urllib.error as e\ntry: r.urlopen(r.Request("
        "\"http://gateway:8000/sdk/v1/models\", headers={\"x-api-key\": os.environ[\"ANTHROPIC_API_KEY\"]}))\n"
        "except e.HTTPError as x: print(\"sdk refused\", x.code)'",
    ]
    command = "".join(f"{step} 2>&1; " for step in steps)
    prompt = f"look around [[fake:call=Bash?{urllib.parse.urlencode({'command': command})}]]"
    run, request = asked(deployment, member, prompt, marker)
    respond(deployment, member, request["id"], {"behavior": "allow"})
    answer = texts(run.result())
    assert marker in answer, answer[-3000:]
    uid, gid = deployment.env["CCPROXY_UID"], deployment.env["CCPROXY_GID"]
    assert f"uid={uid} gid={gid} groups={gid}" in answer, answer[-3000:]  # the host user, no other group
    worker = re.search(r"worker=(\d+)", answer)
    assert worker and worker.group(1) != "", answer[-3000:]
    refusals = {
        "/proc/1/environ": "Permission denied", f"/proc/{worker.group(1)}/environ": "Permission denied",
        f"/proc/{worker.group(1)}/mem": "Permission denied", secrets_dir: "Permission denied",
    }
    for what, error in refusals.items():
        assert re.search(rf"{re.escape(what)}[^\n]*{error}", answer), (what, answer[-3000:])
    assert "Operation not permitted" in answer, answer[-3000:]  # kill -0 <worker>
    assert "redis said" in answer and "NOAUTH" in answer, answer[-3000:]  # reached, and refused
    assert "HTTP Error 401" in answer and "ccproxy_cost_usd_total" not in answer, answer[-3000:]
    assert "key=ccp_run_" in answer and "sdk refused 401" in answer, answer[-3000:]
    assert ".credentials.json" not in answer, answer[-3000:]
    for secret in (deployment.credentials["accessToken"], deployment.credentials["refreshToken"]):
        assert secret not in answer
    for name in SECRET_NAMES:
        assert deployment.env[name] not in answer, name
    assert "SECURITY__" not in answer and "REDIS__URL" not in answer


def test_a_ccproxy_toml_in_the_workspace_changes_nothing(deployment: Deployment, member: str) -> None:
    """The agent may write /workspace; the worker's settings never come from there."""
    deployment.stack.exec("sdk-worker", "sh", "-c",
                          "printf '[claude.options]\\npermission_mode = \"bypassPermissions\"\\n' > "
                          "/workspace/.ccproxy.toml && printf 'not = [toml' > /workspace/ccproxy.toml")
    try:
        deployment.stack.compose("restart", "sdk-worker", timeout=300)
        deployment.stack.wait_healthy(["sdk-worker"], timeout=120)
        name = f"still-asks-{uuid.uuid4().hex[:6]}.txt"
        # Still asked: bypassPermissions was not taken from the file.
        run, request = asked(deployment, member, write_prompt(f"/workspace/{name}", "x"), name)
        respond(deployment, member, request["id"], {"behavior": "deny", "message": "no"})
        run.result()
    finally:
        deployment.stack.exec("sdk-worker", "rm", "-f", "/workspace/.ccproxy.toml", "/workspace/ccproxy.toml",
                              check=False)


# --- failures and restarts ------------------------------------------------------------------------

def test_killing_the_gateway_mid_stream_then_it_restarts(deployment: Deployment) -> None:
    client = deployment.anthropic()
    error: BaseException | None = None
    events: list[str] = []
    try:
        with client.messages.stream(model=MODEL, max_tokens=400,
                                    messages=[{"role": "user", "content": "slowly [[fake:long=200]] [[fake:slow=0.2]]"}]
                                    ) as stream:
            for event in stream:
                events.append(event.type)
                if len(events) == 5:
                    # A crash, not a `stop` (which the restart policy would respect): the container's
                    # init process is killed from the host.
                    pid = harness.run(["podman", "inspect", "--format", "{{.State.Pid}}",
                                       deployment.stack.container("gateway")]).stdout.strip()
                    os.kill(int(pid), signal.SIGKILL)
    except (anthropic.APIError, httpx.HTTPError) as exc:
        error = exc
    assert error is not None or "error" in events, events
    assert "message_stop" not in events
    # restart: unless-stopped brings it back; the next request works.
    deployment.stack.wait_healthy(["gateway"], timeout=180)

    def works() -> bool:
        msg = client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "again"}])
        return msg.content[0].text == "Echo: again"  # type: ignore[union-attr]
    harness.wait_for(works, 120, "an answer after the gateway restarted", interval=1)


def test_down_then_up_keeps_keys_accounts_credentials_and_logs(deployment: Deployment) -> None:
    made = json.loads(deployment.ccproxy("auth", "keys", "create", "--name", f"kept-{uuid.uuid4().hex[:6]}",
                                         "--json"))
    raw = deployment.anthropic(made["key"]).messages.with_raw_response.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "before down"}])
    request_id = raw.headers["request-id"]
    deployment.access_row(request_id)
    def accounts() -> list[tuple[str, str]]:
        rows = json.loads(deployment.ccproxy("auth", "auth", "status", "--json"))
        return sorted((str(r.get("name")), str(r.get("kind"))) for r in rows)
    account = f"api-{uuid.uuid4().hex[:6]}"  # kept in the ccproxy-data volume
    deployment.stack.exec("auth", "ccproxy", "auth", "add-key", "--account", account, "--key", "-",
                          input=deployment.fake.api_key() + "\n")
    accounts_before = accounts()
    assert (account, "api_key") in accounts_before
    deployment.stack.compose("down", timeout=600)  # no -v: the volumes stay
    up_and_ready(deployment.stack, {}, deployment.token)  # credentials not written again
    msg = deployment.anthropic(made["key"]).messages.create(model=MODEL, max_tokens=20,
                                                            messages=[{"role": "user", "content": "after up"}])
    assert msg.content[0].text == "Echo: after up"  # type: ignore[union-attr]
    assert accounts() == accounts_before
    assert deployment.stack.exec("auth", "test", "-s", "/data/claude/.credentials.json", check=False).returncode == 0
    assert deployment.access_row(request_id, timeout=30)["upstream_request_id"] == request_id


def test_timings_reported(deployment: Deployment) -> None:
    """Not a check: the build and start-up times, in the test's output (-s or the CI log)."""
    harness.log(f"compose test timings (s): {json.dumps({k: round(v) for k, v in deployment.timings.items()})}")
    assert deployment.timings["up"] > 0
    assert socket.gethostname()
