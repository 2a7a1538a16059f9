"""``python -m tests.fake_upstream --port N [--state-file F]``: run the fake as its own process."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from tests.fake_upstream.app import MAX_BODY_BYTES, create_app
from tests.fake_upstream.state import CLAUDE_CLI_CLIENT_ID


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-file", type=Path, default=None,
                        help="keep issued credentials here, so a restarted fake still knows them")
    parser.add_argument("--client-id", default=CLAUDE_CLI_CLIENT_ID, help="the OAuth client_id accepted")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    app = create_app(state_file=args.state_file, client_id=args.client_id, max_body_bytes=args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                loop="uvloop", http="httptools", timeout_keep_alive=75)


if __name__ == "__main__":
    main()
