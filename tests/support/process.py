"""Start a server process, wait until it answers, and always kill its whole process tree.

No fixed sleeps: readiness is polled with a deadline, and a process that dies while we wait is
reported with the tail of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass
class Proc:
    """A running server: its URL, its process, its log."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait(timeout)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait(5)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (test URL)
            return bool(200 <= resp.status < 300)
    except urllib.error.HTTPError as exc:
        return bool(exc.code < 500)
    except (urllib.error.URLError, OSError):
        return False


def start_process(
    cmd: Sequence[str],
    *,
    url: str,
    health_url: str | None,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    port: int = 0,
    timeout: float = 20.0,
) -> Proc:
    """Run ``cmd`` in its own process group with its output in ``log_path``; return once
    ``health_url`` answers (any status below 500). ``health_url=None``: do not wait."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    process = subprocess.Popen(
        list(cmd), env=dict(env) if env is not None else None, cwd=cwd,
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    proc = Proc(url=url, process=process, log_path=log_path, port=port, env=dict(env or {}))
    if health_url is None:
        return proc
    deadline = time.monotonic() + timeout
    while not http_ok(health_url):
        if process.poll() is not None:
            raise RuntimeError(
                f"{cmd[0]} exited with {process.returncode} before answering {health_url}:\n"
                + proc.log_text()[-4000:]
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{cmd[0]} did not answer {health_url} within {timeout}s:\n{proc.log_text()[-4000:]}")
        time.sleep(0.05)
    return proc
