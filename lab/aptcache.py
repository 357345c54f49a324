"""The hosts' only way out: apt-cacher-ng on this machine's loopback, fed from Debian's
mirror, and a forwarder that exposes just that port inside the lab namespace.

The forwarder (lab/forward.py) listens in the lab namespace and connects from the
machine's namespace, so the lab needs no route, NAT or forwarding to the real network.
"""

from __future__ import annotations

import os
import socket
import subprocess

from .util import CACHE, NETNS, STATE, log, stop_pidfile, wait_until

ACNG_PORT = 3142
PROXY_IP = "198.51.100.1"  # the lab internet host: every lab host's apt proxy
PROXY_URL = f"http://{PROXY_IP}:{ACNG_PORT}"
LOCAL_URL = f"http://127.0.0.1:{ACNG_PORT}"


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def start_cache() -> None:
    """Start apt-cacher-ng on 127.0.0.1 unless one already answers (it's shared by runs)."""
    if _port_open("127.0.0.1", ACNG_PORT):
        return
    cache = CACHE / "apt-cacher-ng"
    logs = CACHE / "apt-cacher-ng-log"
    for d in (cache, logs):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, _uid("apt-cacher-ng"), _gid("apt-cacher-ng"))
    STATE.mkdir(parents=True, exist_ok=True)
    # Our own config dir: the packaged one remaps deb.debian.org to ftp.debian.org, which
    # this machine can't reach. Without remapping it caches by URL, as a plain proxy.
    conf = CACHE / "apt-cacher-ng-conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "acng.conf").write_text(
        f"CacheDir: {cache}\nLogDir: {logs}\nSupportDir: /usr/lib/apt-cacher-ng\n"
        f"BindAddress: 127.0.0.1\nPort: {ACNG_PORT}\nSocketPath: {cache}/socket\n"
        "ExThreshold: 0\nVerboseLog: 1\n"
    )
    proc = subprocess.Popen(
        ["/usr/sbin/apt-cacher-ng", "-c", str(conf), "ForeGround=1"],
        stdout=open(STATE / "acng.out", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_drop_to_acng,
    )
    (STATE / "acng.mypid").write_text(str(proc.pid))
    wait_until(lambda: _port_open("127.0.0.1", ACNG_PORT), 15, "apt-cacher-ng")
    log(f"apt-cacher-ng on {LOCAL_URL} (cache {cache})")


def stop_cache() -> None:
    """Stop apt-cacher-ng when the last lab goes down, whichever lab started it: a second
    lab (its own MAILSTACK_LAB_NETNS) may still be installing packages through it."""
    others = [n for n in lab_namespaces() if n != NETNS]
    if others:
        log(f"apt-cacher-ng left running: {', '.join(others)} still up")
        return
    stop_pidfile(STATE / "acng.mypid", 2.0)
    # Started by a lab that went down before this one: its pid file went with its STATE.
    conf = str(CACHE / "apt-cacher-ng-conf")
    r = subprocess.run(["pgrep", "-f", f"apt-cacher-ng -c {conf}"], capture_output=True, text=True)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), 15)
        except ProcessLookupError:
            pass


def lab_namespaces() -> list[str]:
    """Network namespaces of running labs (mailstack-lab, mailstack-lab-*: README "The lab")."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    names = (line.split()[0] for line in r.stdout.splitlines() if line.strip())
    return [n for n in names if n == "mailstack-lab" or n.startswith("mailstack-lab-")]


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_gid


def _drop_to_acng() -> None:
    os.setgid(_gid("apt-cacher-ng"))
    os.setuid(_uid("apt-cacher-ng"))


def start_forwarder() -> None:
    from . import forward

    forward.start("apt-forwarder", [(True, PROXY_IP, ACNG_PORT, "127.0.0.1", ACNG_PORT)])
