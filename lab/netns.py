"""Run parts of this process inside the lab namespace: setns(2) switches the calling
thread only, and sockets keep the namespace they were made in."""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager

from .util import NETNS

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_local = threading.local()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextmanager
def inside(netns: str | None = None):
    """This thread in the lab namespace (or the one at the path netns, e.g.
    /proc/<pid>/ns/net of a test's namespace)."""
    if getattr(_local, "depth", 0):
        _local.depth += 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    lab = os.open(netns or f"/run/netns/{NETNS}", os.O_RDONLY)
    try:
        _setns(lab)
        _local.depth = 1
        try:
            yield
        finally:
            _local.depth = 0
            _setns(home)
    finally:
        os.close(home)
        os.close(lab)
