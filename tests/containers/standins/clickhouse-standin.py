"""The ClickHouse stand-in's server: tests/chdb_http.py on 0.0.0.0:8123 over /var/lib/clickhouse,
with the users the official image would have (CLICKHOUSE_USER / CLICKHOUSE_PASSWORD, and the
``<users>`` of /etc/clickhouse-server/users.d/*.xml with ``from_env`` passwords) checked on every
request. Grants are not enforced (chDB has no access control); the official image is the one
that checks them."""

from __future__ import annotations

import base64
import os
import sys
import xml.etree.ElementTree as ET
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, "/opt/chdb")
import chdb_http


def users() -> dict[str, str]:
    found: dict[str, str] = {}
    if os.environ.get("CLICKHOUSE_USER"):
        found[os.environ["CLICKHOUSE_USER"]] = os.environ.get("CLICKHOUSE_PASSWORD", "")
    for path in sorted(Path("/etc/clickhouse-server/users.d").glob("*.xml")):
        root = ET.parse(path).getroot()  # noqa: S314 - the operator's own config
        for user in root.findall("./users/*"):
            password = user.find("password")
            if password is None:
                continue
            value = os.environ.get(password.get("from_env", ""), password.text or "")
            found[user.tag] = value
    return found


USERS = users()


class Handler(chdb_http.Handler):
    def credentials(self) -> tuple[str, str]:
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        user = self.headers.get("X-ClickHouse-User") or params.get("user") or ""
        key = self.headers.get("X-ClickHouse-Key") or params.get("password") or ""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
        return user or "default", key

    def handle_query(self, body: bytes) -> None:
        if urlsplit(self.path).path.rstrip("/") != "/ping":
            user, key = self.credentials()
            if USERS and USERS.get(user) != key:
                self.reply(516, f"Code: 516. DB::Exception: {user}: Authentication failed".encode(),
                           {"X-ClickHouse-Exception-Code": "516"})
                return
        super().handle_query(body)


    def do_HEAD(self) -> None:
        """``HEAD /ping`` (the image's healthcheck: ``wget --spider``)."""
        ok = urlsplit(self.path).path.rstrip("/") == "/ping"
        self.send_response(200 if ok else 405)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> None:
    data = Path("/var/lib/clickhouse/chdb")
    data.mkdir(parents=True, exist_ok=True)
    Handler.engine = chdb_http.Engine(str(data))
    if os.environ.get("CLICKHOUSE_DB"):
        Handler.engine.session.query(f"CREATE DATABASE IF NOT EXISTS `{os.environ['CLICKHOUSE_DB']}`")
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("0.0.0.0", 8123), Handler)
    print("clickhouse stand-in (chDB) listening on 0.0.0.0:8123", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
