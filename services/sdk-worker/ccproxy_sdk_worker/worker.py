"""An arq worker whose one function runs Claude Code: :func:`main` for ``ccproxy run sdk-worker``,
:meth:`Supervised.running` for ``ccproxy serve``. Workers share one queue, each running at most
``CLAUDE__MAX_CONCURRENT_RUNS`` jobs; a job is never retried (a run has side effects).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import arq.worker
import orjson
import uvicorn
from arq.worker import Worker, func
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ccproxy_core.metrics import Metrics
from ccproxy_core.permissions import HttpPermissionGate, PermissionGate
from ccproxy_core.redis import connect
from ccproxy_core.sdk_jobs import HEALTH_INTERVAL, JOB_FUNCTION, SdkJob, SdkKeys, arq_pool, dumps
from ccproxy_core.server import StartupError, bind
from ccproxy_core.settings import SECRETS_DIR_ENV, Settings
from ccproxy_sdk_worker.identity import RunAs, prepare
from ccproxy_sdk_worker.runner import Runner

log = logging.getLogger(__name__)


async def _skip_info(*_args: Any, **_kwargs: Any) -> None:
    """arq's start-up ``INFO`` call, only logged, that fakeredis lacks."""


def build_worker(
    settings: Settings, redis: Redis, name: str | None, gate: PermissionGate | None, run_as: RunAs | None
) -> Worker:
    if settings.redis.url is None:
        arq.worker.log_redis_info = _skip_info
    claude = settings.claude
    keys = SdkKeys(settings.redis.key_prefix, claude.queue_name)
    runner = Runner(settings, redis, name, gate, run_as)
    metrics = Metrics("sdk-worker")

    async def run_sdk_job(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        enqueued = ctx.get("enqueue_time")
        if enqueued is not None:  # how long the run waited for a free worker
            wait = max(0.0, time.time() - enqueued.timestamp())
            metrics.queue_wait.labels(metrics.service, claude.queue_name).observe(wait)
        return await runner.run(SdkJob.model_validate(payload))

    log.info(
        "sdk-worker %s: queue %s, %d run(s) at once, CLI %s, workspace %s",
        runner.name, keys.queue, claude.max_concurrent_runs, runner.cli_path or "(bundled)", runner.root,
    )
    return Worker(
        functions=[func(run_sdk_job, name=JOB_FUNCTION, timeout=claude.run_timeout + 30, max_tries=1)],
        queue_name=keys.queue,
        redis_pool=arq_pool(redis, keys.queue),
        max_jobs=claude.max_concurrent_runs,
        poll_delay=claude.poll_interval,
        allow_abort_jobs=True,
        retry_jobs=False,
        keep_result=0,
        handle_signals=False,  # main's uvicorn (or serve's) owns SIGINT/SIGTERM
        job_serializer=dumps,
        job_deserializer=orjson.loads,
        health_check_key=keys.health(runner.name),
        health_check_interval=HEALTH_INTERVAL,
        ctx={"runner": runner, "metrics": metrics},
    )


class Supervised:
    """arq's loop ends at the first Redis error (a restart, a failover), leaving a healthy-looking
    process that takes no job: so a fresh worker of the same name runs it again, after a backoff."""

    def __init__(
        self, settings: Settings, redis: Redis, gate: PermissionGate | None, run_as: RunAs | None = None
    ) -> None:
        self._make = functools.partial(build_worker, settings, redis, gate=gate, run_as=run_as)
        #: The worker running now (a new object after each restart).
        self.worker = self._make(None)
        self.name: str = self.worker.ctx["runner"].name
        self.restarts = 0

    async def run(self) -> None:
        delay = 1.0
        while True:
            began = time.monotonic()
            try:
                await self.worker.async_run()
                reason = "its loop ended"
            except Exception as exc:  # whatever stopped it, the worker comes back
                reason = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - began > 60:
                delay = 1.0  # it ran a good while: this is a new incident
            log.error("sdk-worker %s stopped (%s); starting it again in %.0f s", self.name, reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            # Runs the old loop started go on to their end; the new loop takes new jobs.
            self.worker = self._make(self.name)
            self.restarts += 1
            log.info("sdk-worker %s started again (restart %d)", self.name, self.restarts)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Supervised]:
        """:meth:`run` as a task; on the way out it and the runs (their CLIs) get 20 s to wind down."""
        loop = asyncio.ensure_future(self.run())
        try:
            yield self
        finally:
            loop.cancel()
            running = [task for task in self.worker.tasks.values() if not task.done()]
            for task in running:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.gather(loop, *running, return_exceptions=True), 20)


def gate_from_settings(settings: Settings) -> PermissionGate | None:
    """The stack's gate: the permissions service at ``SERVICES__PERMISSIONS_URL``; unset, what the
    permission mode does not allow is refused (the CLI cannot ask anyone)."""
    url = settings.services.permissions_url
    if not url:
        log.warning("SERVICES__PERMISSIONS_URL is not set: tool uses the permission mode does not allow are refused")
        return None
    secret = settings.security.internal_secret
    return HttpPermissionGate(url, secret.get_secret_value() if secret else None)


def health_app(supervised: Supervised, redis: Redis) -> Starlette:
    async def health(request: Request) -> Response:
        try:
            ready = bool(await asyncio.wait_for(redis.ping(), 2))
        except Exception:
            ready = False
        worker = supervised.worker
        return JSONResponse({"status": "ok", "ready": ready, "worker": supervised.name, "runs": len(worker.job_tasks),
                             "max_runs": worker.max_jobs, "restarts": supervised.restarts, "checks": {"redis": ready}})

    async def scrape(request: Request) -> Response:
        worker = supervised.worker
        metrics: Metrics = worker.ctx["metrics"]
        with contextlib.suppress(Exception):  # Redis down: the last value stays
            depth = await asyncio.wait_for(redis.zcard(worker.queue_name), 2)
            metrics.queue_depth.labels(metrics.service, worker.queue_name).set(depth)
        return await metrics.endpoint(request)

    return Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/metrics", scrape, methods=["GET"])])


def scrub_environment(environ: Any = os.environ) -> list[str]:
    """Remove every ccproxy setting (and where the secret files are) from the environment, which the
    CLI and its commands inherit; once the settings are loaded. Returns the names removed."""
    sections = {name.upper() for name in Settings.model_fields}
    removed = [name for name in environ
               if name.upper() in sections or (name.upper().split("__", 1)[0] in sections and "__" in name)
               or name.upper() == SECRETS_DIR_ENV]
    for name in removed:
        del environ[name]
    return removed


def main(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, with ``/health`` on ``SERVER__PORT``."""
    if settings.redis.url is None:
        raise StartupError("the sdk-worker needs the Redis the gateway uses: set REDIS__URL "
                           "(ccproxy serve runs a worker in process)")
    # Settings and secret files are read: from here on Claude Code's user cannot reach this process.
    run_as = prepare(settings)
    scrub_environment()
    sock = bind(settings.server.host, settings.server.port)

    async def run() -> None:
        redis = connect(settings.redis)
        supervised = Supervised(settings, redis, gate_from_settings(settings), run_as)
        server = uvicorn.Server(uvicorn.Config(health_app(supervised, redis), log_config=None,
                                               log_level=settings.server.log_level, access_log=False, lifespan="off"))
        try:
            async with supervised.running():
                await server.serve(sockets=[sock])  # returns on SIGINT/SIGTERM
        finally:
            with contextlib.suppress(Exception):
                await supervised.worker.close()

    asyncio.run(run())
