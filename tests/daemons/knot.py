"""knot: an authoritative server on a loopback port serving given zone files."""

from __future__ import annotations

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

from tests.daemons.ports import free_port


class Knot:
    """knotd on 127.0.0.1:<random port> serving the given zone files from a temp dir."""

    def __init__(self, zone_texts: dict[str, str]):
        self.zones = zone_texts
        self.dir = Path(tempfile.mkdtemp(prefix="mailstack-knot-"))
        self.port = free_port()
        self.proc = None
        zone_conf = ""
        for z, text in zone_texts.items():
            (self.dir / f"{z}.zone").write_text(text)
            zone_conf += f"  - domain: {z}\n    file: {z}.zone\n"
        self.conf = self.dir / "knot.conf"
        self.conf.write_text(f"""server:
    rundir: {self.dir}
    listen: 127.0.0.1@{self.port}
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
template:
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
        self.proc = subprocess.Popen(
            ["knotd", "-c", str(self.conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 15
        pending = set(self.zones)
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd exited: {self.proc.stdout.read()}")
            for z in list(pending):
                try:
                    if self.query(z, "SOA").rcode() == dns.rcode.NOERROR:
                        pending.discard(z)
                except (OSError, dns.exception.Timeout):
                    pass
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"knotd did not load {pending}")

    def query(self, name: str, rtype: str):
        q = dns.message.make_query(dns.name.from_text(name), rtype)
        return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=2)

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
