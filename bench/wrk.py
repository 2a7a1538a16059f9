"""wrk as the load generator for non-streaming requests (C, epoll: it costs the servers
nothing to be measured). A Lua script sets the POST body and headers and prints the
summary and latency percentiles as one JSON line, which is parsed here."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any

import orjson

MARKER = "BENCH-JSON "

SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,' ..
    '"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    cpu: int | None = None,
    timeout_s: int = 10,
) -> dict[str, Any]:
    """One wrk run; latency figures in milliseconds, errors summed (non-2xx included)."""
    header_lines = "\n".join(f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in headers.items())
    script = SCRIPT % {"body": lua_string(body.decode()), "headers": header_lines, "marker": MARKER}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
        path = fh.name
    # One thread per core wrk may use; pinned to one core, one thread.
    threads = 1 if cpu is not None or connections < 8 else min(2, os.cpu_count() or 1)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s", "-s", path, url]
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False)
    finally:
        os.unlink(path)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            raw = orjson.loads(line[len(MARKER):])
            break
    else:
        raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = raw["requests"] - raw["status"]
    return {
        "requests": raw["requests"],
        "errors": errors,
        "rps": ok / (raw["duration_us"] / 1e6),
        "latency": {
            "p50_ms": raw["p50_us"] / 1000,
            "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000,
        },
    }
