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

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ccproxy_core.errors import ClientFormat, ProxyError, path_format, render_error


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
            raise StartupError(
                f"port {port} on {host} is already in use; stop the other process or pick another "
                f"port with --port (or SERVER__PORT)"
            ) from exc
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class SlowClientProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two limits uvicorn lacks (a client sending half its
    headers, or half its body, held a connection and its memory forever):

    - a request's headers must arrive within ``header_timeout`` seconds of the connection opening
      or of the request's first byte;
    - its body may not pause for more than ``body_timeout`` seconds.

    Too slow: a 408 (JSON in the client's format, as far as the path tells it) and the
    connection is closed; the app sees the client go away. Costs nothing on a request whose body
    arrives with its headers: the body timer is only armed when a read ends mid-body.
    """

    header_timeout = 10.0
    body_timeout = 30.0
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if self._body_timer is not None:
            self._body_at = self.loop.time()
        elif cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Mid-body (also of a request already answered, e.g. 401, whose body still trickles in).
            self._body_at = self.loop.time()
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_body_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._refuse(f"the request headers did not arrive within {self.header_timeout:g} s", "anthropic")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        idle = self.loop.time() - self._body_at
        if idle < self.body_timeout:  # bytes came meanwhile: wait for the rest of the pause
            self._body_timer = self.loop.call_later(self.body_timeout - idle, self._body_too_slow)
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


def serve_app(
    app: ASGIApp, host: str, port: int, log_level: str = "info",
    header_timeout: float = 10.0, body_timeout: float = 30.0, forwarded_allow_ips: str = "127.0.0.1",
) -> None:
    sock = bind(host, port)
    protocol = type(
        "SlowClientProtocol", (SlowClientProtocol,), {"header_timeout": header_timeout, "body_timeout": body_timeout}
    )
    config = uvicorn.Config(
        app,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=protocol,
        log_config=None,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=75,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    FrozenStartServer(config).run(sockets=[sock])


class FrozenStartServer(uvicorn.Server):
    """uvicorn, with the garbage collector tuned for a request-serving process.

    Measured on ``ccproxy serve`` (bench, c=50, CPU per proxied request; gc callbacks for the
    collector's own time): with CPython's defaults the cyclic collector took ~1.3 s of CPU
    per 20k requests, because objects of requests in flight survived the tiny first generation
    (700 allocations) and were traversed again in the older ones, along with the ~200k
    objects start-up leaves (pydantic schemas, routes, chDB's and the SDKs' modules). A first
    generation of 10,000 lets nearly all of a request's objects die before a collection, and
    ``gc.freeze()`` after start-up takes the long-lived ones out of every collection:
    collector time 1.3 -> 0.4 s, CPU per request ~615 -> ~460 µs. Reference counting still
    frees everything acyclic at once; only cyclic garbage waits a little longer.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        gc.set_threshold(GC_FIRST_GENERATION, 10, 10)
        freeze()
        # Some of it is built lazily, by the first requests and background tasks (the access
        # log's ClickHouse client, first-use imports): freeze once more when that is done.
        asyncio.get_running_loop().call_later(REFREEZE_AFTER_SECONDS, freeze)


#: Allocations between two collections of the youngest generation (CPython's default: 700).
GC_FIRST_GENERATION = 10_000
#: When to freeze the long-lived objects a second time.
REFREEZE_AFTER_SECONDS = 5.0


def freeze() -> None:
    gc.collect()
    gc.freeze()


def http_ok(url: str, timeout: float = 2.0, verify: bool = True) -> bool:
    """GET ``url`` answers 2xx. ``verify=False``: accept any TLS certificate (our own Traefik's)."""
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
