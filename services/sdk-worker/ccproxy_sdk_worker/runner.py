"""One SDK-mode job: Claude Code run through claude-agent-sdk, its output written to Redis.

The CLI never holds an upstream credential (the agent could read it and spend outside any budget):
it calls the gateway's ``/api`` with a token of its run only (ccproxy_core.identity.RunTokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import anyio
from claude_agent_sdk import ClaudeAgentOptions, PermissionResultAllow, PermissionResultDeny, ResultError, query
from claude_agent_sdk.types import CanUseTool, PermissionResult, SessionStore, ToolPermissionContext
from redis.asyncio import Redis

from ccproxy_core.errors import ProxyError
from ccproxy_core.identity import RunGrant, RunTokens
from ccproxy_core.permissions import PermissionAsk, PermissionGate, denied_message
from ccproxy_core.redis import RedisLock
from ccproxy_core.sdk_jobs import (
    CLAIM_RUN,
    END,
    ERROR,
    HEARTBEAT_TTL,
    RESULT,
    START,
    SdkJob,
    SdkKeys,
    SdkResult,
    claim,
    heartbeat,
    own_session,
    session_uuid,
    write_record,
)
from ccproxy_core.sdk_options import apply_overrides, check_overrides, resolve_cwd, workspace_root
from ccproxy_core.settings import ClaudeOptions, Settings
from ccproxy_sdk_worker.convert import EventBuilder
from ccproxy_sdk_worker.identity import RunAs
from ccproxy_sdk_worker.transcript import RedisSessionStore, split_conversation, system_text, transcript, user_content

log = logging.getLogger(__name__)

#: In the environment of every CLI process a job starts: how leftovers are found.
RUN_ENV = "CCPROXY_SDK_RUN"

#: ClaudeOptions fields ccproxy resolves itself; the others are ClaudeAgentOptions' own, by name.
NOT_SDK_OPTIONS = {"cwd", "model", "append_system_prompt"}

#: Shows the client a line of ccproxy's own in the answer (a permission that timed out).
Notify = Callable[[str], Awaitable[None]]


def can_use_tool(gate: PermissionGate, job: SdkJob, session_id: str, notify: Notify) -> CanUseTool:
    """Claude Code's prompts as permission requests on behalf of the job's key; the run waits for the
    decision. Deny, timeout or an unreachable service answer Claude with a message; a timeout or an
    unreachable service is also shown to the client. Why not an MCP tool: docs/permissions.md."""

    async def decide(tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext) -> PermissionResult:
        ask = PermissionAsk(tool_name=tool_name, input=tool_input, key_id=job.key_id,
                            key_name=job.key_name or job.key_id, title=context.title,
                            tool_use_id=context.tool_use_id, session_id=session_id, run_id=job.id)
        try:
            view = await gate.ask(ask)
        except Exception as exc:
            log.warning("run %s: permission for %s not asked: %s", job.id, tool_name, exc)
            message = f"Permission to use {tool_name} was denied: the permissions service cannot be reached."
            unseen = True
        else:
            log.info("run %s: permission %s for %s: %s", job.id, view.id, tool_name, view.status)
            if view.decision is not None and view.decision.behavior == "allow":
                return PermissionResultAllow(updated_input=view.decision.updated_input)
            message, unseen = denied_message(view), view.status == "expired"
        if unseen:  # nobody saw the request: the client is told too
            await notify(f"\n[ccproxy] {message}\n")
        return PermissionResultDeny(message=message)

    return decide


def find_cli(configured: str | None) -> str | None:
    """The repo's pinned CLI (npm) before the one the SDK bundles; None lets the SDK use its own."""
    if configured:
        return configured
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        local = base / "node_modules" / ".bin" / "claude"
        if local.exists():
            return str(local)
    return shutil.which("claude")


def gateway_url(settings: Settings) -> str:
    """``SERVICES__GATEWAY_URL``, else this process's own server (``ccproxy serve``), a wildcard on loopback."""
    if settings.services.gateway_url:
        return settings.services.gateway_url.rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.server.host, settings.server.host)
    return f"http://[{host}]:{settings.server.port}" if ":" in host else f"http://{host}:{settings.server.port}"


def kill_leftovers(job_id: str) -> int:
    """The last resort, whoever cancelled: SIGKILL every process whose environment has ``RUN_ENV=job_id``."""
    marker = f"{RUN_ENV}={job_id}".encode()
    killed = 0
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone already, or not ours to read or kill
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


class Runner:
    """Runs jobs for one worker process (its arq function calls :meth:`run`)."""

    def __init__(self, settings: Settings, redis: Redis, name: str | None = None,
                 gate: PermissionGate | None = None, run_as: RunAs | None = None) -> None:
        self.settings = settings
        self.run_as = run_as  # Claude Code's own user (CLAUDE__RUN_AS_USER), or None
        self.redis = redis
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.keys = SdkKeys(settings.redis.key_prefix, settings.claude.queue_name)
        self.store = RedisSessionStore(redis, self.keys, settings.claude.session_ttl)
        self.cli_path = find_cli(settings.claude.cli_path)
        self.root = workspace_root(settings)
        #: Where tool uses are asked (None: Claude Code's permission mode alone decides).
        self.gate = gate
        self.api_url = gateway_url(settings) + "/api"
        self.run_tokens = RunTokens(redis, settings.redis.key_prefix)

    async def run(self, job: SdkJob) -> dict[str, Any]:
        if not await claim(self.redis, self.keys, job.id, CLAIM_RUN):
            return {"status": "given-up"}  # the gateway stopped waiting before we got here
        # The run's own liveness for the gateway, beside it until it ends (sdk_jobs.HEARTBEAT_TTL).
        await self.redis.set(self.keys.alive(job.id), "1", ex=HEARTBEAT_TTL)
        beating = asyncio.ensure_future(heartbeat(self.redis, self.keys, job.id))
        try:
            await write_record(self.redis, self.keys, job.id, START, {"worker": self.name})
            result = await self._run(job)
            await write_record(self.redis, self.keys, job.id, RESULT, result.model_dump())
            return {"status": "ok", "session_id": result.session_id}
        except asyncio.CancelledError:
            log.info("run %s cancelled", job.id)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._error(job, ProxyError(499, "run cancelled")))
            raise
        except ProxyError as exc:
            await self._error(job, exc)
            return {"status": "error", "error": exc.message}
        except Exception as exc:
            log.exception("run %s failed", job.id)
            await self._error(job, ProxyError(500, f"the Claude Code run failed ({type(exc).__name__})"))
            return {"status": "error", "error": type(exc).__name__}
        finally:
            beating.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(write_record(self.redis, self.keys, job.id, END, {}))
            with contextlib.suppress(Exception):
                await asyncio.shield(self.redis.delete(self.keys.alive(job.id)))
            if killed := kill_leftovers(job.id):
                log.warning("run %s: killed %d leftover Claude Code process(es)", job.id, killed)

    async def _error(self, job: SdkJob, exc: ProxyError) -> None:
        error = {"status": exc.status, "type": exc.error_type, "message": exc.message}
        await write_record(self.redis, self.keys, job.id, ERROR, error)

    async def _run(self, job: SdkJob) -> SdkResult:
        overrides = check_overrides(job.options, self.settings)
        opts = apply_overrides(overrides, self.settings)  # only ever narrower than the operator's
        cwd = resolve_cwd(opts.cwd, self.root)
        if cwd == self.root:
            cwd.mkdir(parents=True, exist_ok=True)
        elif not cwd.is_dir():
            raise ProxyError(400, f"cwd {opts.cwd!r} does not exist in the workspace", param="cwd")
        model = overrides.get("model") or self.settings.claude.options.model or str(job.body.get("model") or "")
        if job.session_id is None:
            return await self._run_session(job, opts, cwd, model, str(uuid.uuid4()))
        session_id = session_uuid(job.session_id)
        lock = RedisLock(self.redis, self.keys.session_lock(session_id), self.settings.claude.run_timeout + 60)
        if not await lock.acquire(self.settings.claude.queue_timeout):
            raise ProxyError(409, f"session {job.session_id} is busy with another request")
        try:
            # The gateway checked already; a worker trusts no job it did not check itself.
            await own_session(self.redis, self.keys, session_id, job.key_id, self.settings.claude.session_ttl)
            return await self._run_session(job, opts, cwd, model, session_id)
        finally:
            with contextlib.suppress(Exception):
                await lock.release()

    async def _run_session(self, job: SdkJob, opts: ClaudeOptions, cwd: Path, model: str, session_id: str) -> SdkResult:
        history, last = split_conversation(job.body)
        # A session Claude Code has already gets only the new message; else the history becomes its transcript.
        known = await self.store.exists(session_id)
        entries = [] if known else transcript(history, session_id, str(cwd), model)
        await self.store.append({"project_key": "", "session_id": session_id}, entries)
        resume = session_id if known or entries else None
        builder = EventBuilder(
            f"msg_{job.id}", model, self.settings.claude.sdk_message_mode, self.settings.claude.pretty_format
        )

        async def notify(text: str) -> None:
            # Called while Claude Code waits on a permission: no block of a turn is open.
            for name, data in builder.text_block(text):
                await write_record(self.redis, self.keys, job.id, name, data)

        content = user_content(last)
        if not content:
            raise ProxyError(400, "messages: the last user message is empty", param="messages")

        async def prompt() -> AsyncIterator[dict[str, Any]]:
            message = {"role": "user", "content": content}
            yield {"type": "user", "message": message, "parent_tool_use_id": None, "session_id": session_id}

        async def consume(options: ClaudeAgentOptions) -> None:
            try:
                async for message in query(prompt=prompt(), options=options):
                    for name, data in builder.feed(message):
                        await write_record(self.redis, self.keys, job.id, name, data)
            except ResultError:
                # A run stopped at its max_turns or max_budget_usd: the CLI exits non-zero after
                # its result, which already went out as the answer's end.
                if not builder.finished:
                    raise

        started = time.perf_counter()
        try:
            async with self._run_env(job, session_id) as env:
                options = self._options(job, opts, cwd, model, session_id, resume, notify, env)
                await self._cancellable(consume(options))
            if not builder.finished:
                raise ProxyError(502, "Claude Code ended without a result")
        except BaseException:
            # Cut short (cancelled, failed): the summary so far (turns, tool uses) goes out all the same.
            with contextlib.suppress(Exception):
                spent = builder.spent().model_copy(update={"worker": self.name})
                await asyncio.shield(write_record(self.redis, self.keys, job.id, RESULT, spent.model_dump()))
            raise
        result = builder.spent()
        result.worker = self.name
        result.session_id = result.session_id or session_id
        await self._note_session(result.session_id, cwd, model)
        log.info(
            "run %s: session %s, %d turn(s), %d tool use(s), %.2fs", job.id, result.session_id,
            result.num_turns, result.tool_uses, time.perf_counter() - started,
        )
        return result

    def _options(
        self, job: SdkJob, opts: ClaudeOptions, cwd: Path, model: str, session_id: str, resume: str | None,
        notify: Notify, env: dict[str, str],
    ) -> ClaudeAgentOptions:
        appended = "\n\n".join(t for t in (opts.append_system_prompt, system_text(job.body)) if t)
        system_prompt: Any = {"type": "preset", "preset": "claude_code"}
        if appended:
            system_prompt["append"] = appended
        return ClaudeAgentOptions(
            **opts.model_dump(exclude=NOT_SDK_OPTIONS),
            cli_path=self.cli_path,
            cwd=str(cwd),
            model=model or None,
            system_prompt=system_prompt,
            resume=resume,
            session_id=None if resume else session_id,
            include_partial_messages=True,
            session_store=cast(SessionStore, self.store),
            env=env,
            # The CLI's uid (Popen's ``user``; an int needs no passwd entry); its group is ours.
            user=cast(Any, self.run_as.uid) if self.run_as else None,
            stderr=lambda line: log.debug("claude[%s]: %s", job.id, line.rstrip()),
            # A permission prompt tool of the user's own wins (the SDK takes one or the other).
            can_use_tool=can_use_tool(self.gate, job, session_id, notify)
            if self.gate and not opts.permission_prompt_tool_name
            else None,
        )

    @contextlib.asynccontextmanager
    async def _run_env(self, job: SdkJob, session_id: str) -> AsyncIterator[dict[str, str]]:
        """The gateway's ``/api`` with a token of this run only and an empty config directory, both
        gone when the run ends, however it ends (the token's TTL bounds it if the worker dies)."""
        grant = RunGrant(caller_id=job.key_id, key=job.key, job_id=job.id, session_id=session_id)
        token = await self.run_tokens.mint(grant, self.settings.claude.run_timeout + 30)
        config_dir = tempfile.mkdtemp(prefix="ccproxy-claude-")
        try:
            yield {
                "ANTHROPIC_BASE_URL": self.api_url,
                "ANTHROPIC_API_KEY": token,
                "CLAUDE_CONFIG_DIR": config_dir,
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_AUTOUPDATER": "1",
                RUN_ENV: job.id,
            }
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.run_tokens.revoke(token))
            shutil.rmtree(config_dir, ignore_errors=True)

    async def _cancellable(self, work: Any) -> None:
        """The SDK's clean-up is written for anyio cancellation and can skip killing the CLI on a bare
        asyncio cancel (arq's): so ``work`` runs in an anyio scope that a cancel cancels, then waits for."""
        scope = anyio.CancelScope()

        async def inner() -> None:
            with scope:
                await work

        task = asyncio.ensure_future(inner())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            scope.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 15)
            raise

    async def _note_session(self, session_id: str, cwd: Path, model: str) -> None:
        key = self.keys.session(session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"worker": self.name, "cwd": str(cwd), "model": model, "updated_at": time.time()})
            pipe.expire(key, self.settings.claude.session_ttl)
            await pipe.execute()
