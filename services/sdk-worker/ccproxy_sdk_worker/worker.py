"""The sdk-worker process: an arq worker whose one function runs Claude Code.

``ccproxy run sdk-worker`` runs :func:`main`; ``ccproxy serve`` starts the same worker inside its
own process with :func:`in_process`, on the embedded Redis stand-in (fakeredis). arq runs
unchanged there except for one start-up call, ``INFO``, which fakeredis does not implement:
it only logs the server's version, so it is skipped when Redis is the stand-in.

Several workers share one queue; each takes at most ``CLAUDE__MAX_CONCURRENT_RUNS`` jobs at once,
and a job is never retried (a run has side effects: files written, commands run).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from ccproxy_core.redis import connect
from ccproxy_core.sdk_jobs import HEALTH_INTERVAL, JOB_FUNCTION, SdkJob, SdkKeys, arq_pool, dumps
from ccproxy_core.server import StartupError, bind
from ccproxy_core.settings import Settings
from ccproxy_sdk_worker.permissions import hook_from_settings
from ccproxy_sdk_worker.runner import PermissionHook, Runner

log = logging.getLogger(__name__)


async def _skip_info(*_args: Any, **_kwargs: Any) -> None:
    return None


def build_worker(
    settings: Settings,
    redis: Redis,
    *,
    handle_signals: bool = True,
    name: str | None = None,
    permission_hook: PermissionHook | None = None,
) -> Worker:
    if settings.redis.url is None:
        arq.worker.log_redis_info = _skip_info  # fakeredis has no INFO
    claude = settings.claude
    keys = SdkKeys(settings.redis.key_prefix, claude.queue_name)
    runner = Runner(settings, redis, name, permission_hook)
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
    worker = Worker(
        functions=[func(run_sdk_job, name=JOB_FUNCTION, timeout=claude.run_timeout + 30, max_tries=1)],
        queue_name=keys.queue,
        redis_pool=arq_pool(redis, keys.queue),
        max_jobs=claude.max_concurrent_runs,
        poll_delay=claude.poll_interval,
        allow_abort_jobs=True,
        retry_jobs=False,
        max_tries=1,
        keep_result=0,
        handle_signals=handle_signals,
        job_serializer=dumps,
        job_deserializer=orjson.loads,
        health_check_key=keys.health(runner.name),
        health_check_interval=HEALTH_INTERVAL,
        ctx={"runner": runner, "metrics": metrics},
    )
    return worker


@contextlib.asynccontextmanager
async def in_process(
    settings: Settings, redis: Redis, permission_hook: PermissionHook | None = None
) -> AsyncIterator[Worker]:
    """Run a worker as a task of the current event loop (``ccproxy serve``)."""
    worker = build_worker(settings, redis, handle_signals=False, permission_hook=permission_hook)
    task = asyncio.ensure_future(worker.async_run())
    try:
        yield worker
    finally:
        task.cancel()
        for job_task in list(worker.tasks.values()):
            job_task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(task, *worker.tasks.values(), return_exceptions=True), 20)


def health_app(worker: Worker, redis: Redis) -> Starlette:
    """``GET /health`` like every service (compose healthcheck, ``ccproxy up``, the stack tests)."""

    async def health(request: Request) -> Response:
        try:
            ready = bool(await asyncio.wait_for(redis.ping(), 2))
        except Exception:
            ready = False
        body = {
            "status": "ok",
            "ready": ready,
            "worker": worker.ctx["runner"].name,
            "runs": len(worker.job_tasks),
            "max_runs": worker.max_jobs,
            "checks": {"redis": ready},
        }
        return JSONResponse(body)

    async def scrape(request: Request) -> Response:
        metrics: Metrics = worker.ctx["metrics"]
        with contextlib.suppress(Exception):  # Redis down: the last value stays
            depth = await asyncio.wait_for(redis.zcard(worker.queue_name), 2)
            metrics.queue_depth.labels(metrics.service, worker.queue_name).set(depth)
        return await metrics.endpoint(request)

    return Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/metrics", scrape, methods=["GET"])])


def scrub_environment(environ: Any = os.environ) -> list[str]:
    """Remove every ccproxy setting from this process's environment, once the settings are loaded.

    claude-agent-sdk starts the CLI with this process's environment (plus what the runner passes),
    so Claude Code and any command it runs would otherwise see ``SECURITY__INTERNAL_SECRET`` and
    every other setting of the worker. Returns the names removed."""
    sections = {name.upper() for name in Settings.model_fields}
    removed = [name for name in environ
               if name.upper() in sections or (name.upper().split("__", 1)[0] in sections and "__" in name)]
    for name in removed:
        del environ[name]
    return removed


def main(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, with ``/health`` on ``SERVER__PORT``; runs in progress are
    cancelled on the way out, their CLIs stopped."""
    if settings.redis.url is None:
        raise StartupError(
            "the sdk-worker needs the Redis the gateway uses: set REDIS__URL (ccproxy serve runs a worker in "
            "process)"
        )
    scrub_environment()
    sock = bind(settings.server.host, settings.server.port)

    async def run() -> None:
        redis = connect(settings.redis)
        worker = build_worker(settings, redis, handle_signals=False, permission_hook=hook_from_settings(settings))
        config = uvicorn.Config(
            health_app(worker, redis),
            log_config=None, log_level=settings.server.log_level, access_log=False, lifespan="off",
        )
        server = uvicorn.Server(config)
        jobs = asyncio.ensure_future(worker.async_run())
        try:
            await server.serve(sockets=[sock])  # returns on SIGINT/SIGTERM
        finally:
            jobs.cancel()
            for task in list(worker.job_tasks.values()):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.gather(jobs, *worker.tasks.values(), return_exceptions=True), 20)
            await worker.close()

    asyncio.run(run())
