"""The server and client network namespaces every smtpd harness runs in, and the base
services of the server namespace (unbound and PostgreSQL, `start_resolver_and_database`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from mailstack import hosts as H
from tests.daemons import postgresql, unbound


class Netns:
    """A server network + mount namespace (own queue, /run, users and resolver) and a
    client network namespace joined by a veth pair, so that clients are not local
    addresses of the server (smtpd treats those as `from local`)."""

    def __init__(self, root: Path, server_ip: str, client_ips: list[str], more_server_ips: tuple[str, ...] = ()):
        self.root = root
        passwd = root / "passwd"
        passwd.write_text(
            Path("/etc/passwd").read_text() + f"vmail:x:{H.VMAIL_UID}:{H.VMAIL_UID}::/var/vmail:/usr/sbin/nologin\n"
        )
        group = root / "group"
        group.write_text(Path("/etc/group").read_text() + f"vmail:x:{H.VMAIL_UID}:\n")
        (root / "resolv.conf").write_text("nameserver 127.0.0.53\n")
        self.procs: list[subprocess.Popen] = []
        self.holders: list[subprocess.Popen] = []
        self.client = self._holder(["unshare", "-n"], ["ip link set lo up"])
        self.server = self._holder(
            ["unshare", "-n", "-m"],
            [
                "mount --make-rprivate /",
                "mount -t tmpfs tmpfs /var/spool",
                "mount -t tmpfs tmpfs /run",
                f"mount --bind {root}/resolv.conf /etc/resolv.conf",
                f"mount --bind {passwd} /etc/passwd",
                f"mount --bind {group} /etc/group",
                "ip link set lo up",
                f"ip link add vs type veth peer name vc netns /proc/{self.client.pid}/ns/net",
                *[f"ip addr add {ip}/32 dev vs" for ip in (server_ip, *more_server_ips)],
                "ip link set vs up",
                *[f"ip route add {ip}/32 dev vs" for ip in client_ips],
            ],
        )
        for cmd in (
            ["ip", "link", "set", "vc", "up"],
            *[["ip", "addr", "add", f"{ip}/32", "dev", "vc"] for ip in client_ips],
            *[["ip", "route", "add", f"{ip}/32", "dev", "vc"] for ip in (server_ip, *more_server_ips)],
        ):
            subprocess.run(self.cmd(*cmd, ns=self.client), check=True)

    def _holder(self, unshare: list[str], setup: list[str]) -> subprocess.Popen:
        script = " && ".join([*setup, "echo ready", "exec sleep infinity"])
        p = subprocess.Popen([*unshare, "sh", "-c", script], stdout=subprocess.PIPE, text=True)
        self.holders.append(p)
        line = p.stdout.readline().strip()
        assert line == "ready", f"namespace setup failed: {script}"
        return p

    def cmd(self, *argv, ns=None) -> list[str]:
        ns = ns or self.server
        flags = ["-n", "-m"] if ns is self.server else ["-n"]
        return ["nsenter", "-t", str(ns.pid), *flags, *map(str, argv)]

    def run(self, *argv, client: bool = False, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", 60)
        return subprocess.run(self.cmd(*argv, ns=self.client if client else None), capture_output=True, text=True, **kw)

    def start(self, *argv, log: Path) -> subprocess.Popen:
        p = subprocess.Popen(self.cmd(*argv), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def wait_port(self, ip: str, port: int, proc: subprocess.Popen, log: Path) -> None:
        probe = f"import socket; socket.create_connection(('{ip}', {port}), 1).close()"
        for _ in range(200):
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited:\n{log.read_text()}")
            if self.run("python3", "-c", probe).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"nothing listens on {ip}:{port}:\n{log.read_text()}")

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for h in self.holders:
            h.kill()
            h.wait()


def start_resolver_and_database(
    ns: Netns, ctx, root: Path, extra_dns: str = "", listen: str = "127.0.0.1", hba: str | None = None
) -> dict:
    """unbound on 127.0.0.53 (unbound.TEST_CONF + extra_dns) and a PostgreSQL on
    127.0.0.1:5432 holding the stack's schema and accounts, in the server namespace.
    listen, hba: more addresses, and the rendered pg_hba.conf instead of initdb's."""
    resolver = unbound.start(ns, root, extra_dns)
    db = postgresql.start_in_netns(ns, ctx, root, listen=listen, hba=hba)
    ns.wait_port("127.0.0.53", 53, resolver, root / "unbound.log")
    return {"unbound": resolver, "postgres": db}
