"""Paths, logging and process helpers shared by the lab modules."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("MAILSTACK_LAB_CACHE", "/var/cache/mailstack-lab"))
# Everything a run creates lives here (and in the netns), so `down` can find it all
# again after an interrupted run.
STATE = Path(os.environ.get("MAILSTACK_LAB_STATE", "/run/mailstack-lab"))
# Another name (with its own MAILSTACK_LAB_STATE and MAILSTACK_LAB_HOSTS) runs a second
# lab beside the first: everything else a lab makes lives inside its namespace.
NETNS = os.environ.get("MAILSTACK_LAB_NETNS", "mailstack-lab")
ROOT = Path(__file__).resolve().parent.parent

_t0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[lab {time.monotonic() - _t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(
    cmd: list[str],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | None = None,
    netns: bool = False,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    if netns:
        cmd = ["ip", "netns", "exec", NETNS, *cmd]
    return subprocess.run(
        cmd,
        check=check,
        text=True,
        input=input,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )


def out(cmd: list[str], **kw) -> str:
    return run(cmd, capture=True, **kw).stdout


def write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(path, 0o600)


def pid_alive(pid: int) -> bool:
    """Running, not merely a zombie (a stopped child of ours that nobody reaped yet: kill(0)
    still succeeds on it, and waiting for it to go away would wait forever)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


@contextmanager
def cache_lock(name: str):
    """Held while building something under CACHE: two labs starting at once (several
    checkouts on one machine) would otherwise build in the same directory and break
    each other's build."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def timed(timings: dict[str, float], name: str):
    t = time.monotonic()
    try:
        yield
    finally:
        timings[name] = time.monotonic() - t


def wait_until(fn, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = fn()
            if r:
                return r
        except Exception as exc:  # the condition's own error is the best diagnostic
            last = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


def stop_pidfile(path: Path, grace: float = 5.0) -> None:
    """Stop the process group whose leader's pid is in `path` (TERM, then KILL after
    `grace` seconds) and remove the file; quiet if it is already gone."""
    import signal

    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return
    if pid_alive(pid):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not pid_alive(pid):
                break
    path.unlink(missing_ok=True)
