"""Free TCP ports for servers a test starts (bind port 0, let the OS choose)."""

from __future__ import annotations

import socket

#: Ports the rules reserve for real services on the machine.
RESERVED = frozenset({6379, 5432, 3306, 5672, 1883, 4222, 8000})


def free_port(host: str = "127.0.0.1") -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED:
            return port
