"""knot: an authoritative server on a loopback port serving given zone files; or, in a
test's network namespace, on port 53 of one of its addresses (a resolver's root hints
carry no port), with the root signed as the lab signs it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode

from lab import dns_root
from lab.netns import inside
from tests.daemons.ports import free_port


class Knot:
    """knotd on 127.0.0.1:<random port> serving the given zone files from a temp dir.
    With ns (a tests.daemons.netns.Netns) and address: on address:53 in its server
    namespace. A "." zone is signed (lab/dns_root.py's policy)."""

    def __init__(self, zone_texts: dict[str, str], ns=None, address: str = "127.0.0.1"):
        self.zones = zone_texts
        self.dir = Path(tempfile.mkdtemp(prefix="mailstack-knot-"))
        self.ns = ns
        self.address = address
        self.port = 53 if ns else free_port()
        self.proc = None
        zone_conf = ""
        for z, text in zone_texts.items():
            name = "root" if z == "." else z
            (self.dir / f"{name}.zone").write_text(text)
            zone_conf += f"  - domain: {z}\n    file: {name}.zone\n"
            if z == ".":
                zone_conf += "\n".join(dns_root.KNOT_ZONE_SIGNING) + "\n"
        (self.dir / "db").mkdir()  # where knot keeps the root's keys
        policy = "\n".join(dns_root.KNOT_POLICY) + "\n"
        self.conf = self.dir / "knot.conf"
        self.conf.write_text(f"""server:
    rundir: {self.dir}
    listen: {address}@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: {self.dir}/db
control:
    listen: {self.dir}/knot.sock
{policy}template:
  - id: default
    storage: {self.dir}
    semantic-checks: on
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
{zone_conf}""")

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run(["knotc", "-c", str(self.conf), "zone-check"], capture_output=True, text=True, timeout=30)

    def start(self):
        if self.ns:
            self.proc = self.ns.start("knotd", "-c", self.conf, log=self.dir / "knotd.log")
        else:
            self.proc = subprocess.Popen(
                ["knotd", "-c", str(self.conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        deadline = time.monotonic() + 15
        pending = set(self.zones)
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = (self.dir / "knotd.log").read_text() if self.ns else self.proc.stdout.read()
                raise RuntimeError(f"knotd exited: {out}")
            for z in list(pending):
                try:
                    if self.query(z, "SOA").rcode() == dns.rcode.NOERROR:
                        pending.discard(z)
                except (OSError, dns.exception.Timeout):
                    pass
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"knotd did not load {pending}")

    def query(self, name: str, rtype: str, dnssec: bool = False):
        q = dns.message.make_query(dns.name.from_text(name), rtype, want_dnssec=dnssec)
        with self.inside():
            return dns.query.tcp(q, self.address, port=self.port, timeout=2)

    def inside(self):
        """This thread in knot's namespace (a no-op without one)."""
        return inside(f"/proc/{self.ns.server.pid}/ns/net") if self.ns else contextlib.nullcontext()

    def answer(self, name: str, rtype: str) -> set[str]:
        r = self.query(name, rtype)
        assert r.rcode() == dns.rcode.NOERROR, (name, rtype, dns.rcode.to_text(r.rcode()))
        assert r.flags & dns.flags.AA
        return {rd.to_text() for rrset in r.answer for rd in rrset}

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
