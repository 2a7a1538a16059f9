"""Redis for every service: ``REDIS__URL``'s, else an in-process fakeredis (``ccproxy serve``). Each
process connects once where it is composed and hands the client to every part; an outage is a
quick 503 (:func:`unavailable_as_503`), never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import RedisSettings

log = logging.getLogger(__name__)

UNAVAILABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, asyncio.TimeoutError)


def connect(settings: RedisSettings) -> Redis:
    """A client for ``REDIS__URL``, or for a new embedded server (shared by whoever shares the client)."""
    if settings.url is None:
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    # After a Redis restart every pooled connection is dead: retry once on a new one.
    return Redis.from_url(
        settings.url, socket_connect_timeout=settings.connect_timeout, socket_timeout=settings.socket_timeout,
        retry=Retry(NoBackoff(), 1), retry_on_error=[redis_errors.ConnectionError], health_check_interval=30,
    )


def redacted(url: str | None) -> str:
    if not url:
        return "embedded"
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


#: :data:`UNAVAILABLE` as Starlette's ``exception_handlers`` see it.
REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError)


def unavailable_error(exc: BaseException, what: str = "this request") -> ProxyError:
    """The 503 a client can act on (retry later) for "Redis is down"."""
    return ProxyError(503, f"Redis is unavailable, so {what} cannot be served right now; retry shortly "
                           f"({type(exc).__name__})", headers={"retry-after": "2"})


def error_handlers(
    render: Callable[[Request, ProxyError], Response], crashes: bool = False
) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette's ``exception_handlers``: a ProxyError, an HTTPException (no such route or method) and Redis
    down (a 503 to retry) all answered by ``render``; ``crashes``: any other error too, as a logged 500."""

    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ProxyError):
            error = exc
        elif isinstance(exc, HTTPException):
            error = ProxyError(exc.status_code, str(exc.detail))
        elif isinstance(exc, REDIS_DOWN):
            error = unavailable_error(exc)
        else:
            log.error("unhandled error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
            error = ProxyError(500, "internal error in ccproxy")
        return render(request, error)

    return dict.fromkeys((ProxyError, HTTPException, *REDIS_DOWN, *([Exception] if crashes else [])), handle)


@contextlib.asynccontextmanager
async def unavailable_as_503(what: str = "this request") -> AsyncIterator[None]:
    try:
        yield
    except UNAVAILABLE as exc:
        raise unavailable_error(exc, what) from exc


_PROCESS_TOKEN = secrets.token_hex(16)
#: One holder per key inside this process; Redis arbitrates between processes.
_local_locks: dict[str, asyncio.Lock] = {}


class RedisLock:
    """A lock across processes that a crashed holder cannot keep (``SET NX PX ttl``). The token is the
    process's, its holders taking turns: a ``SET`` whose answer was lost may have taken it after all."""

    def __init__(self, redis: Redis, key: str, ttl: float) -> None:
        self._redis = redis
        self.key = key
        self.ttl = ttl
        self._local = _local_locks.setdefault(key, asyncio.Lock())
        self._held = False

    async def acquire(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        try:
            await asyncio.wait_for(self._local.acquire(), timeout=wait)
        except TimeoutError:
            return False
        try:
            self._held = await self._take(deadline)
        finally:
            if not self._held:
                self._local.release()
        return self._held

    async def _take(self, deadline: float) -> bool:
        ttl_ms = int(self.ttl * 1000)
        pause = 0.02
        while True:
            if await self._redis.set(self.key, _PROCESS_TOKEN, nx=True, px=ttl_ms):
                return True
            value = await self._redis.get(self.key)
            if value is not None and as_text(value) == _PROCESS_TOKEN:
                # Taken by an earlier attempt of ours whose answer was lost: ours, for a full ttl.
                await self._redis.pexpire(self.key, ttl_ms)
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

    async def release(self) -> None:
        """Compare-and-delete with WATCH, which fakeredis runs too (no Lua)."""
        if not self._held:
            return
        self._held = False
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                # WatchError: it changed hands (expired and retaken) in between, not ours to delete.
                with contextlib.suppress(redis_errors.WatchError):
                    await pipe.watch(self.key)
                    value = await pipe.get(self.key)
                    if value is None or as_text(value) != _PROCESS_TOKEN:
                        return
                    pipe.multi()
                    pipe.delete(self.key)
                    await pipe.execute()
        finally:
            self._local.release()

    async def __aenter__(self) -> RedisLock:
        if not await self.acquire(self.ttl):
            raise ProxyError(503, f"timed out waiting for the lock {self.key}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(*UNAVAILABLE):
            await self.release()


def as_text(value: object) -> str:
    """A Redis reply as str: bytes from a raw client, str from a decoding one, numbers as written."""
    return value.decode() if isinstance(value, bytes) else str(value)
