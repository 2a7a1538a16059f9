"""SDK mode's contract between gateway and sdk-workers: an arq job (:class:`SdkJob`) and the Redis
stream of its records. A worker starting a job and the gateway giving up on it race for one ``SET NX``
on its claim key: a job given up is never run, a job claimed is cancelled through arq's abort set."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.utils import timestamp_ms
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from ccproxy_core.client_keys import KeyInfo
from ccproxy_core.errors import ProxyError
from ccproxy_core.identity import ANONYMOUS
from ccproxy_core.models import TokenUsage
from ccproxy_core.redis import as_text
from ccproxy_core.settings import ClaudeSettings

JOB_FUNCTION = "run_sdk_job"

#: ccproxy's own record names (every other record is an Anthropic stream event).
START = "ccproxy.start"
RESULT = "ccproxy.result"
ERROR = "ccproxy.error"
END = "ccproxy.end"

CLAIM_RUN = "run"
CLAIM_GIVEN_UP = "given-up"

RECORD_TTL = 3600
#: Seconds between a worker's health reports (arq's key lives one second longer).
HEALTH_INTERVAL = 5
#: Silence after which the gateway checks that the job's worker is still alive.
LIVENESS_AFTER = 10.0
#: A run's heartbeat: a worker stalled for up to TTL - INTERVAL seconds keeps its runs.
HEARTBEAT_INTERVAL = 3.0
HEARTBEAT_TTL = 20


class SdkJob(BaseModel):
    id: str
    body: dict[str, Any]
    session_id: str | None = None
    #: ``claude_options``, already checked against the allow-list.
    options: dict[str, Any] = Field(default_factory=dict)
    key_id: str = ANONYMOUS.id
    key_name: str = ""
    #: The member key behind ``key_id`` (no secret): its run token's calls carry its limits.
    key: KeyInfo | None = None


class SdkResult(TokenUsage):
    session_id: str | None = None
    stop_reason: str | None = None
    cost_usd: float | None = None
    num_turns: int = 0
    tool_uses: int = 0
    duration_ms: int = 0
    worker: str = ""


class SdkKeys:
    def __init__(self, prefix: str, queue_name: str = "sdk:queue") -> None:
        self.prefix = prefix
        self.queue = prefix + queue_name

    def records(self, job_id: str) -> str:
        return f"{self.prefix}sdk:out:{job_id}"

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}sdk:claim:{job_id}"

    def health(self, worker: str) -> str:
        """arq's health check key: exists while ``worker`` is alive."""
        return f"{self.prefix}sdk:health:{worker}"

    def alive(self, job_id: str) -> str:
        """The run's heartbeat."""
        return f"{self.prefix}sdk:alive:{job_id}"

    def session(self, session_id: str) -> str:
        """Hash: the owner (a key's id), the worker that last ran it, its cwd, when."""
        return f"{self.prefix}sdk:session:{session_id}"

    def session_lock(self, session_id: str) -> str:
        return f"{self.prefix}sdk:session-lock:{session_id}"

    def transcript(self, session_id: str, subpath: str | None = None) -> str:
        base = f"{self.prefix}sdk:transcript:{session_id}"
        return f"{base}:{subpath}" if subpath else base


def session_uuid(client_id: str, owner: str = "") -> str:
    """Claude Code wants UUIDs: another name maps to one per ``owner`` (two keys' "demo" are two
    sessions); a UUID is kept, and :func:`own_session` keeps it to its owner."""
    try:
        return str(uuid.UUID(client_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ccproxy-session:{owner}:{client_id}"))


async def own_session(redis: Redis, keys: SdkKeys, session_id: str, owner: str, ttl: int) -> None:
    """404 if another key owns ``session_id``."""
    key = keys.session(session_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hsetnx(key, "owner", owner)
        pipe.hget(key, "owner")
        pipe.expire(key, ttl)
        _, current, _ = await pipe.execute()
    if as_text(current or b"") != owner:
        raise ProxyError(404, "no such session for this client key", "not_found_error")


def dumps(value: Any) -> bytes:
    """arq's serializer: JSON instead of pickle, so a job in Redis is data, never code."""
    return orjson.dumps(value, default=repr)


def arq_pool(redis: Redis, queue: str) -> ArqRedis:
    return ArqRedis(
        connection_pool=redis.connection_pool, job_serializer=dumps, job_deserializer=orjson.loads,
        default_queue_name=queue,
    )


async def claim(redis: Redis, keys: SdkKeys, job_id: str, value: str) -> bool:
    """The start/give-up race: True if ``value`` won."""
    return bool(await redis.set(keys.claim(job_id), value, nx=True, ex=RECORD_TTL))


async def heartbeat(redis: Redis, keys: SdkKeys, job_id: str) -> None:
    """Runs beside each job until cancelled."""
    while True:
        with contextlib.suppress(Exception):  # the next beat retries; the TTL covers the gap
            await redis.set(keys.alive(job_id), "1", ex=HEARTBEAT_TTL)
        await asyncio.sleep(HEARTBEAT_INTERVAL)


async def write_record(redis: Redis, keys: SdkKeys, job_id: str, name: str, data: Any) -> None:
    key = keys.records(job_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"e": name, "d": orjson.dumps(data)})
        pipe.expire(key, RECORD_TTL)
        await pipe.execute()


class SdkQueue:
    """The gateway's side."""

    def __init__(self, redis: Redis, settings: ClaudeSettings, key_prefix: str) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = SdkKeys(key_prefix, settings.queue_name)
        self.arq = arq_pool(redis, self.keys.queue)

    async def submit(self, job: SdkJob) -> None:
        # _expires: a job nobody started in time is dropped by arq too, not only by our claim.
        queued = await self.arq.enqueue_job(
            JOB_FUNCTION, job.model_dump(mode="json"), _job_id=job.id, _queue_name=self.keys.queue,
            _expires=self.settings.queue_timeout + 60,
        )
        if queued is None:
            raise ProxyError(409, f"a request with id {job.id} is already queued")

    async def give_up(self, job_id: str) -> bool:
        """True if ``job_id`` never started (and now never will)."""
        if await claim(self.redis, self.keys, job_id, CLAIM_GIVEN_UP):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.queue, job_id)
                pipe.delete(job_key_prefix + job_id)
                await pipe.execute()
            return True
        # A worker has it: arq's abort set makes that worker cancel the run (and kill the CLI).
        await self.redis.zadd(abort_jobs_ss, {job_id: timestamp_ms()})
        return False

    async def records(self, job_id: str, ping_after: float | None = None) -> AsyncIterator[tuple[str, Any]]:
        """``(name, data)`` until the end, a ``ping`` after ``ping_after`` silent seconds; 503 when no
        worker started it in time, 504 when the run takes too long."""
        key = self.keys.records(job_id)
        last_id = "0-0"
        started = False
        worker: str | None = None
        deadline = time.monotonic() + self.settings.queue_timeout
        last_record = last_ping = last_check = time.monotonic()
        while True:
            now = time.monotonic()
            if ping_after is not None and now - max(last_record, last_ping) >= ping_after:
                last_ping = now
                yield "ping", {"type": "ping"}
            if worker and now - max(last_record, last_check) >= LIVENESS_AFTER:
                # A dead worker writes nothing more: its run's heartbeat says so before the timeout.
                last_check = now
                if not await self.redis.exists(self.keys.alive(job_id), self.keys.health(worker)):
                    raise ProxyError(502, f"the sdk-worker running this request ({worker}) stopped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not started:
                    if await self.give_up(job_id):
                        raise ProxyError(503, f"no sdk-worker was free within {self.settings.queue_timeout:g} s "
                                         "(CLAUDE__QUEUE_TIMEOUT); retry later or add workers",
                                         "overloaded_error", headers={"retry-after": "5"})
                    # A worker claimed it just now: its start record is on the way.
                    started = True
                    deadline = time.monotonic() + self.settings.run_timeout
                    continue
                await self.give_up(job_id)
                raise ProxyError(504, f"the Claude Code run took longer than {self.settings.run_timeout:g} s")
            # A second at most: XREAD BLOCK must end before the client's socket timeout would.
            block = int(min(1000, remaining * 1000)) or 1
            reply = await self.redis.xread({key: last_id}, block=block, count=100)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last_record = time.monotonic()
                    last_id = as_text(entry_id)
                    name = as_text(fields.get(b"e", fields.get("e", b"")))
                    data = orjson.loads(fields.get(b"d", fields.get("d", b"null")))
                    if name == START and not started:
                        started = True
                        worker = (data or {}).get("worker")
                        deadline = time.monotonic() + self.settings.run_timeout
                    yield name, data
                    if name == END:
                        return

    async def cancel(self, job_id: str) -> bool:
        """Never raises (with Redis down the run ends at its own timeout). True if it never started."""
        with contextlib.suppress(Exception):
            return await asyncio.shield(self.give_up(job_id))
        return False
