"""A throw-away ``redis-server`` of a test's own, on a free port, that the test may kill, freeze
and start again on the same port (the shared Redis on 6379 must never be restarted)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.support.ports import free_port
from tests.support.process import wait_until


class OwnRedis:
    """``append_only``: every write is fsynced to an append-only file, so a kill loses nothing
    and a restart brings the data back (as the compose stack's Redis is configured)."""

    def __init__(self, workdir: Path, *, append_only: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.append_only = append_only
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.append_only else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.workdir), *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(self.ping, timeout=10, message=f"redis-server on {self.port} to answer")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        """An outage, not a clean shutdown: SIGKILL (so nothing is saved on the way out)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
