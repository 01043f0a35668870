"""Polling for the integration tests: a condition that becomes true some time after a command returns, and a
container's web server reached from the host."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float = 15) -> bool:
    """Poll `check` every 0.1 s until it is true or `timeout` seconds pass; the last answer is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def get_index(port: int, host: str = "127.0.0.1") -> bytes:
    """The raw HTTP/1.0 answer to `GET /index.html` on host:port (a container's httpd through a published port), or
    b"" while nothing answers there."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
            return b"".join(chunks)
    except OSError:
        return b""
