"""Loopback ports and waiting: the one copy every harness uses."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    """A TCP port nothing listens on at the moment (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait(predicate, what: str, limit: float = 30.0, interval: float = 0.1):
    """predicate's first true value, asked every interval seconds for at most limit."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
