"""Running an ASGI app: bind first (so a busy port is one clear line), then uvicorn with uvloop
and httptools."""

from __future__ import annotations

import asyncio
import errno
import gc
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ccproxy_core.errors import ClientFormat, ProxyError, path_format, render_error
from ccproxy_core.settings import ServerSettings


class StartupError(Exception):
    """Start-up cannot go on; the message says what to do. Printed as one line, exit 2."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use; stop the other process or pick another "
                               "port with --port (or SERVER__PORT)") from exc
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class SlowClientProtocol(HttpToolsProtocol):
    """httptools with the limits uvicorn lacks (half-sent headers or body held a connection forever):
    headers within ``header_timeout`` seconds, no body pause over ``body_timeout``; else a 408."""

    header_timeout = 10.0
    body_timeout = 30.0
    #: The one pending limit: the headers' (armed at each message's start) or the body's (from its first bytes).
    _timer: asyncio.TimerHandle | None = None
    _data_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._headers_too_slow, self.header_timeout)

    def data_received(self, data: bytes) -> None:
        self._data_at = self.loop.time()
        super().data_received(data)
        cycle = self.cycle
        if self._timer is None and cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Mid-body, also of a request already answered (a 401 whose body still trickles in).
            self._arm(self._body_too_slow, self.body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self._headers_too_slow, self.header_timeout)

    def on_headers_complete(self) -> None:
        self._arm(None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._arm(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _arm(self, callback: Callable[[], None] | None, delay: float = 0.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, callback) if callback is not None else None

    def _headers_too_slow(self) -> None:
        self._timer = None
        self._refuse(f"the request headers did not arrive within {self.header_timeout:g} s", "anthropic")

    def _body_too_slow(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        idle = self.loop.time() - self._data_at
        if idle < self.body_timeout:  # bytes came meanwhile: wait for the rest of the pause
            self._arm(self._body_too_slow, self.body_timeout - idle)
            return
        fmt = path_format(str(cycle.scope.get("path", "")))
        if not cycle.response_started:
            self._refuse(f"the request body stopped arriving for {self.body_timeout:g} s; send it whole", fmt)
        cycle.disconnected = True  # the app stops waiting for the body; what it sends is dropped
        cycle.message_event.set()
        self.transport.close()

    def _refuse(self, message: str, fmt: ClientFormat) -> None:
        if self.transport.is_closing():
            return
        body = render_error(ProxyError(408, message), fmt)
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        self.transport.close()


def serve_app(app: ASGIApp, server: ServerSettings) -> None:
    sock = bind(server.host, server.port)
    limits = {"header_timeout": server.header_timeout, "body_timeout": server.body_timeout}
    protocol = type("SlowClientProtocol", (SlowClientProtocol,), limits)
    config = uvicorn.Config(
        app, loop="uvloop" if sys.platform != "win32" else "asyncio", http=protocol, log_config=None,
        log_level=server.log_level, access_log=False, lifespan="on", timeout_keep_alive=75,
        proxy_headers=True, forwarded_allow_ips=server.forwarded_allow_ips,
    )
    FrozenStartServer(config).run(sockets=[sock])


class FrozenStartServer(uvicorn.Server):
    """A first GC generation of 10,000 (CPython's: 700) lets a request's objects die before a collection,
    and ``gc.freeze()`` takes start-up's ~200k objects out of every one (bench: CPU ~615 -> ~460 µs)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        gc.set_threshold(10_000, 10, 10)
        freeze()
        # Some is built lazily by the first requests (first-use imports): freeze once more after.
        asyncio.get_running_loop().call_later(5.0, freeze)


def freeze() -> None:
    gc.collect()
    gc.freeze()


def http_ok(url: str, timeout: float = 2.0, verify: bool = True) -> bool:
    """GET ``url`` answers 2xx. ``verify=False``: any TLS certificate (our own Traefik's)."""
    context = None
    if not verify:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310 (our own URL)
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
