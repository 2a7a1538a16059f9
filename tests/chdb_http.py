"""ClickHouse's HTTP interface, served from chDB: a real ClickHouse engine behind the protocol
``clickhouse-connect`` speaks, for testing the analytics service's server path.

Debian's ``clickhouse-server`` (18.16) is too old for ``clickhouse-connect`` and for the schema,
so the tests run the ClickHouse 26.9 engine that chDB embeds, in a process of its own (one
process per data directory), and stop and restart that process to simulate an outage.

What is implemented, exactly (the subset of https://clickhouse.com/docs/interfaces/http that
``clickhouse-connect`` uses):

- ``GET /ping`` answers ``Ok.``.
- ``POST /`` (and ``GET /``) with the SQL in the body, in the ``query`` parameter, or both
  (``query`` first, then the body, as ClickHouse joins them). Results come in the format the
  SQL names (``clickhouse-connect`` appends ``FORMAT Native``; schema probes use ``FORMAT
  JSON``), produced by chDB itself, so the bytes are the engine's own.
- Inserts: ``INSERT INTO t (cols) FORMAT Native`` followed by the data, either in the body after
  the statement's line or with the statement in ``query`` and the data as the body, the body
  optionally compressed (``Content-Encoding``: lz4 frame, zstd, gzip, deflate), as
  ``clickhouse-connect`` sends with ``compress=True``. Rows go in through chDB's streaming insert.
- ``param_<name>`` parameters bind ``{name:Type}`` placeholders (chDB parses them with the same
  escaping rules as the server).
- ``database`` runs ``USE``; other parameters that are ClickHouse settings are applied with
  ``SET`` (unknown ones are ignored); transport parameters (``session_id``, ``query_id``,
  ``compress``, ``client_protocol_version``, ...) are accepted and ignored.
- Responses are never compressed (a server may always answer ``identity``). Errors are HTTP 500
  with the engine's ``Code: N. DB::Exception: ...`` text and ``X-ClickHouse-Exception-Code``,
  which ``clickhouse-connect`` turns into ``DatabaseError``. ``X-ClickHouse-Summary`` carries
  ``written_rows``/``read_rows``; ``X-ClickHouse-Timezone`` is ``UTC``.

Not implemented: sessions (one shared engine session), authentication, progress headers,
external data, multipart forms, response compression.

Run: ``python -m tests.chdb_http --port N --path DIR``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from chdb import session as chdb_session

TRANSPORT_PARAMS = {
    "query", "database", "default_format", "session_id", "session_timeout", "session_check",
    "query_id", "compress", "decompress", "user", "password", "quota_key", "buffer_size",
    "wait_end_of_query", "client_protocol_version", "role", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "enable_http_compression",
}
INSERT_RE = re.compile(rb"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)[ \t]*\r?\n?", re.IGNORECASE | re.DOTALL)
ERROR_CODE_RE = re.compile(r"Code: (\d+)\.")


def decompress(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding}")


class Engine:
    """One chDB session, used by one request at a time (SET and USE are session state)."""

    def __init__(self, path: str) -> None:
        self.session = chdb_session.Session(path)
        self.lock = threading.Lock()
        self.known_settings = {
            line.strip('"')
            for line in self.session.query("SELECT name FROM system.settings", "CSV").bytes().decode().split()
        }

    def prepare(self, params: dict[str, str]) -> None:
        if params.get("database"):
            self.session.query(f"USE `{params['database']}`")
        for name, value in params.items():
            if name in TRANSPORT_PARAMS or name.startswith("param_") or name not in self.known_settings:
                continue
            self.session.query(f"SET {name} = '{value.replace(chr(39), chr(92) + chr(39))}'")

    def execute(self, params: dict[str, str], body: bytes) -> tuple[bytes, dict[str, int]]:
        binds = {k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")}
        with self.lock:
            self.prepare(params)
            query = params.get("query", "").encode()
            text = query if not body else (query + b"\n" + body if query else body)
            insert = INSERT_RE.match(text)
            if insert is not None:
                data = text[insert.end():]
                statement, fmt = insert.group(1).decode(), insert.group(2).decode()
                with self.session.send_insert(statement, fmt) as inserter:
                    if data:
                        inserter.append(data)
                    result = inserter.finish()
                return b"", {"written_rows": result.rows_written}
            fmt = params.get("default_format", "TabSeparated")
            res = self.session.query(text.decode(), fmt, params=binds or None)
            return res.bytes(), {"read_rows": res.rows_read(), "written_rows": res.rows_written()}


class Handler(BaseHTTPRequestHandler):
    engine: Engine
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_query(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/ping/"):
            self.reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            out, counts = self.engine.execute(params, decompress(body, self.headers.get("Content-Encoding")))
        except Exception as exc:
            message = str(exc)
            code = ERROR_CODE_RE.search(message)
            self.reply(500, message.encode(), {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": code.group(1) if code else "1001",
            })
            return
        summary = {k: str(v) for k, v in counts.items()}
        self.reply(200, out, {
            "Content-Type": "application/octet-stream",
            "X-ClickHouse-Summary": json.dumps(summary),
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "chdb-http",
        })

    def do_GET(self) -> None:
        self.handle_query(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            body = b""
        self.handle_query(body)

    def read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True, help="chDB data directory")
    args = parser.parse_args()
    Handler.engine = Engine(args.path)
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"chdb-http listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
