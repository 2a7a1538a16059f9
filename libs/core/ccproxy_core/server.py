"""Running an ASGI app: bind first (so a busy port is one clear line), then uvicorn with uvloop
and httptools."""

from __future__ import annotations

import errno
import socket
import sys

import uvicorn
from starlette.types import ASGIApp


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


def serve_app(app: ASGIApp, host: str, port: int, log_level: str = "info") -> None:
    sock = bind(host, port)
    config = uvicorn.Config(
        app,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        log_config=None,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=75,
    )
    uvicorn.Server(config).run(sockets=[sock])
