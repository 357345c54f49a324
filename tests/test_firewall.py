"""Firewall model: exact Hetzner rules, and the nftables ruleset checked by the real `nft`
and exercised with real TCP connects inside throwaway network namespaces."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile

import pytest

from mailstack import firewall as F
from mailstack import hosts as H
from tests.conftest import settings_from

ANY = ("0.0.0.0/0", "::/0")
ADMIN = ("203.0.113.0/24", "2001:db8:1234::/48")
FORBIDDEN = {24, 5432, 10025, 11332, 11333, 11334, 6379}


def _rules(settings, role):
    return [(r.direction, r.protocol, r.port, r.source_ips) for r in F.hcloud_rules(settings, H.hosts(settings)[role])]


def _base(ports):
    return [("in", "tcp", "22", ADMIN), ("in", "icmp", None, ANY)] + [("in", "tcp", str(p), ANY) for p in ports]


def test_hcloud_rules_ha(settings):
    assert _rules(settings, "mx1") == _base([25, 80, 443, 465, 587])
    assert _rules(settings, "imap") == _base([80, 993, 4190])
    assert _rules(settings, "mx2") == _base([25, 80])
    assert all(r.description for h in H.hosts(settings).values() for r in F.hcloud_rules(settings, h))


def test_hcloud_rules_single(single_settings):
    assert list(H.hosts(single_settings)) == ["mx1"]
    assert _rules(single_settings, "mx1") == _base([25, 80, 443, 465, 587, 993, 4190])


def test_public_ports_follow_services(settings):
    hs = H.hosts(settings)
    assert F.public_ports(hs["mx2"]) == [("tcp", 25), ("tcp", 80)]
    web_only = H.Host("x", "x.example.org", "10.77.1.20", frozenset({H.WEB}))
    assert F.public_ports(web_only) == [("tcp", 80), ("tcp", 443)]


def test_ssh_follows_admin_cidrs():
    s = settings_from(admin={"sshCidrs": ["192.0.2.7/32"], "sshKeys": []})
    ssh = [r for r in F.hcloud_rules(s, H.hosts(s)["mx1"]) if r.port == "22"]
    assert [r.source_ips for r in ssh] == [("192.0.2.7/32",)]


@pytest.mark.parametrize("topology", ["ha", "single"])
def test_forbidden_ports_never_public(topology):
    s = settings_from(topology=topology)
    for h in H.hosts(s).values():
        assert not {int(r.port) for r in F.hcloud_rules(s, h) if r.port} & FORBIDDEN
        for line in F.nftables(s, h).splitlines():
            ports = {int(p) for p in re.findall(r"dport (\d+)", line)}
            if ports & FORBIDDEN:
                assert re.search(r"ip saddr \{ 10\.77\.1\.\d+(, 10\.77\.1\.\d+)* \}", line), line


def test_private_flows(settings, single_settings):
    hs = H.hosts(settings)
    flows = {r: [(f.port, f.sources) for f in F.private_flows(settings, h)] for r, h in hs.items()}
    assert flows == {
        "mx1": [
            (5432, ("10.77.1.12", "10.77.1.13")),
            (10025, ("10.77.1.12", "10.77.1.13")),
            # Spam learning: mx2's Rspamd to mx1's Redis, imap to mx1's controller.
            (6379, ("10.77.1.13",)),
            (11334, ("10.77.1.12",)),
        ],
        "imap": [(24, ("10.77.1.11",))],
        "mx2": [],
    }
    # The learning flows come with the deploy step's ruleset, not user-data's first boot
    # one (adding them replaced no server).
    mx1 = hs["mx1"]
    assert [f.port for f in F.private_flows(settings, mx1, first_boot=True)] == [5432, 10025]
    assert "dport 6379" not in F.nftables(settings, mx1) and "dport 11334" not in F.nftables(settings, mx1)
    assert "dport 6379" in F.nftables(settings, mx1, ssh_limit=True)
    assert "dport 11334" in F.nftables(settings, mx1, ssh_limit=True)
    assert F.private_flows(single_settings, H.hosts(single_settings)["mx1"]) == []
    assert "saddr" not in F.nftables(single_settings, H.hosts(single_settings)["mx1"])


def test_nftables_is_independent_of_mail_settings_and_admin(settings):
    other = settings_from(
        domains=["example.com"],
        users=[{"address": "zed@example.com"}],
        aliases=[],
        hostnames={"domain": "example.com", "mx1": "a", "mx2": "b", "imap": "c", "smtp": "d"},
        admin={"sshCidrs": ["192.0.2.7/32"], "sshKeys": []},
        dmarc={"policy": "reject"},
        mtaSts={"mode": "testing"},
        dns={"ttl": 600},
    )
    for role in H.ROLES:
        assert F.nftables(settings, H.hosts(settings)[role]) == F.nftables(other, H.hosts(other)[role])
    moved = settings_from(hetzner={"privateCidr": "10.90.0.0/16"})
    assert "10.90.1.11" in F.nftables(moved, H.hosts(moved)["imap"])


# --------------------------------------------------------------------------- real nft

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _nft_check(text: str) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write(text)
        f.flush()
        # A private network namespace: checking must never touch the host's ruleset.
        return subprocess.run(["unshare", "-n", "nft", "-c", "-f", f.name], capture_output=True, text=True, timeout=30)


@needs_root
@pytest.mark.parametrize("topology", ["ha", "single"])
def test_nft_accepts_every_ruleset(topology):
    s = settings_from(topology=topology)
    for h in H.hosts(s).values():
        res = _nft_check(F.nftables(s, h))
        assert res.returncode == 0, res.stderr


@needs_root
def test_nft_check_rejects_a_broken_ruleset(settings):
    text = F.nftables(settings, H.hosts(settings)["mx1"]).replace("dport 25 accept", "dport 25 acept")
    assert _nft_check(text).returncode != 0


# --------------------------------------------------------------------------- behaviour

SERVER = r"""
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(16); socks.append(s)
def serve(s):
    while True:
        c, _ = s.accept(); c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = r"""
import json, socket, sys, concurrent.futures as cf
def probe(p):
    src, dst, port = p
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(float(sys.argv[1]))
    try:
        s.bind((src, 0)); s.connect((dst, port)); return "open"
    except socket.timeout: return "dropped"
    except ConnectionRefusedError: return "refused"
    finally: s.close()
probes = json.loads(sys.stdin.read())
with cf.ThreadPoolExecutor(len(probes)) as ex:
    print(json.dumps(list(ex.map(probe, probes))))
"""

SRV4, SRV6 = "10.77.1.250", "fd77::250"
OUT4, OUT6 = "10.77.1.99", "fd77::99"  # an address no rule names: "the internet"
MX1, IMAP, MX2 = "10.77.1.11", "10.77.1.12", "10.77.1.13"
PORTS = [22, 24, 25, 80, 443, 465, 587, 993, 4190, 5432, 6379, 10025, 11334]
TIMEOUT = 0.7  # a SYN to a listener on a veth is answered in well under a millisecond


def _run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30, **kw)


class Lab:
    """Two namespaces joined by a veth: `srv` runs listeners behind the ruleset under test,
    `cli` holds the peers' private addresses and an outside address."""

    def __init__(self):
        self.tag = secrets.token_hex(3)
        self.srv, self.cli = f"msfw-srv-{self.tag}", f"msfw-cli-{self.tag}"
        self.server = None

    def setup(self):
        tag = self.tag
        _run("ip", "netns", "add", self.srv)
        _run("ip", "netns", "add", self.cli)
        _run(
            "ip",
            "link",
            "add",
            f"msa{tag}",
            "netns",
            self.srv,
            "type",
            "veth",
            "peer",
            "name",
            f"msb{tag}",
            "netns",
            self.cli,
        )
        for ns, dev, addrs in (
            (self.srv, f"msa{tag}", [SRV4, SRV6]),
            (self.cli, f"msb{tag}", [MX1, IMAP, MX2, OUT4, OUT6]),
        ):
            for a in addrs:
                plen = "64" if ":" in a else "24"
                extra = ["nodad"] if ":" in a else []
                self.ns(ns, "ip", "addr", "add", f"{a}/{plen}", "dev", dev, *extra)
            self.ns(ns, "ip", "link", "set", dev, "up")
            self.ns(ns, "ip", "link", "set", "lo", "up")

    def ns(self, ns, *cmd, **kw):
        return _run("ip", "netns", "exec", ns, *cmd, **kw)

    def listen(self, ports):
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.srv, sys.executable, "-c", SERVER, *map(str, ports)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.server.stdout.readline().strip() == "ready"

    def load(self, ruleset: str):
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
            f.write(ruleset)
            f.flush()
            self.ns(self.srv, "nft", "-f", f.name)

    def probe(self, probes):
        out = self.ns(self.cli, sys.executable, "-c", PROBE, str(TIMEOUT), input=json.dumps(probes))
        return dict(zip(map(tuple, probes), json.loads(out.stdout)))

    def close(self):
        if self.server and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        for ns in (self.srv, self.cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lab = Lab()
    try:
        lab.setup()
        lab.listen(PORTS)
        yield lab
    finally:
        lab.close()


def _expect(lab, ruleset, expected: dict[tuple[str, int], str]):
    probes = [[src, SRV6 if ":" in src else SRV4, port] for (src, port) in expected]
    if ruleset is not None:
        lab.load(ruleset)
    got = {(src, port): r for (src, _, port), r in lab.probe(probes).items()}
    assert got == expected


def test_rulesets_filter_real_connections(lab):
    ha = settings_from()
    hs = H.hosts(ha)
    # Control: without a ruleset every listener answers, so "dropped" below is the firewall.
    _expect(lab, None, {(OUT4, 24): "open", (OUT4, 5432): "open", (OUT6, 6379): "open"})

    _expect(
        lab,
        F.nftables(ha, hs["imap"]),
        {
            (MX1, 24): "open",
            (MX2, 24): "dropped",
            (OUT4, 24): "dropped",
            (OUT6, 24): "dropped",
            (OUT4, 993): "open",
            (OUT6, 993): "open",
            (OUT4, 4190): "open",
            (OUT4, 80): "open",
            (OUT4, 22): "open",
            (OUT4, 25): "dropped",
            (MX1, 5432): "dropped",
            (MX1, 6379): "dropped",
        },
    )
    _expect(
        lab,
        F.nftables(ha, hs["mx1"]),
        {
            (IMAP, 5432): "open",
            (MX2, 5432): "open",
            (OUT4, 5432): "dropped",
            (OUT6, 5432): "dropped",
            (OUT4, 25): "open",
            (OUT6, 25): "open",
            (OUT4, 465): "open",
            (OUT4, 587): "open",
            (OUT4, 443): "open",
            (OUT4, 80): "open",
            (IMAP, 24): "dropped",
            (OUT4, 993): "dropped",
            (OUT4, 11334): "dropped",
            (OUT4, 6379): "dropped",
            (MX2, 10025): "open",
            (IMAP, 10025): "open",
            (OUT4, 10025): "dropped",
            (OUT6, 10025): "dropped",
        },
    )
    _expect(
        lab,
        F.nftables(ha, hs["mx2"]),
        {
            (OUT4, 25): "open",
            (OUT6, 25): "open",
            (OUT4, 465): "dropped",
            (IMAP, 5432): "dropped",
            (MX1, 24): "dropped",
            (OUT4, 443): "dropped",
        },
    )
    single = settings_from(topology="single")
    _expect(
        lab,
        F.nftables(single, H.hosts(single)["mx1"]),
        {
            (OUT4, 993): "open",
            (OUT4, 25): "open",
            (OUT4, 587): "open",
            (IMAP, 5432): "dropped",
            (MX1, 24): "dropped",
            (OUT4, 11334): "dropped",
        },
    )


# --------------------------------------------------------------------------- the edge

EDGE_LINE = re.compile(
    r"^\s*(?:(?P<ip>ip6?) saddr \{ (?P<cidrs>[^}]*) \}|meta nfproto (?P<fam>ipv4|ipv6)) "
    r'(?:(?P<proto>tcp|udp) dport (?P<port>\S+)|meta l4proto (?P<l4>\S+)) accept comment "(?P<why>[^"]*)"$'
)
ADDR = H.Address("198.51.100.11", "2001:db8:100::11")


def _edge_rules(text: str) -> list[tuple]:
    """The edge file read back as Hetzner rules: lines of one rule (one per family) are
    merged by their comment, in order."""
    rules: list[list] = []
    for line in text.splitlines():
        m = EDGE_LINE.match(line)
        if not m:
            assert " accept comment" not in line, f"unparsed rule line: {line}"
            continue
        if m["fam"]:
            sources = ["0.0.0.0/0" if m["fam"] == "ipv4" else "::/0"]
        else:
            sources = [c.strip() for c in m["cidrs"].split(",")]
        l4 = m["proto"] or m["l4"]
        proto = "icmp" if l4 in ("icmp", "ipv6-icmp") else l4
        key = ["in", proto, m["port"], m["why"]]
        if rules and rules[-1][:4] == key:
            rules[-1][4] += sources
        else:
            rules.append(key + [sources])
    return [(d, p, port, tuple(src), why) for d, p, port, why, src in rules]


@pytest.mark.parametrize("topology", ["ha", "single"])
def test_edge_is_the_hcloud_rules_exactly(topology):
    s = settings_from(topology=topology, admin={"sshCidrs": list(ADMIN), "sshKeys": []})
    for h in H.hosts(s).values():
        text = F.hcloud_nftables(s, h, ADDR)
        want = [(r.direction, r.protocol, r.port, r.source_ips, r.description) for r in F.hcloud_rules(s, h)]
        assert _edge_rules(text) == want
        # Filters only the host's own addresses, on both ways in, and drops the rest.
        assert text.count("ip daddr 198.51.100.11 jump inbound") == 2
        assert text.count("ip6 daddr 2001:db8:100::11 jump inbound") == 2
        assert text.index("ct state established,related accept") < text.index("dport 22")
        assert text.endswith('\t\tcounter drop comment "no rule allows it"\n\t}\n}\n')


def test_edge_renders_one_family_and_ranges():
    s = settings_from(admin={"sshCidrs": ["192.0.2.7/32"], "sshKeys": []})
    text = F.hcloud_nftables(s, H.hosts(s)["mx1"], ADDR)
    assert "ip saddr { 192.0.2.7/32 } tcp dport 22 accept" in text
    assert "ip6 saddr" not in text  # no IPv6 admin network: no IPv6 SSH rule at all
    assert F._rule_lines(F.Rule("in", "udp", "60000-61000", ("::/0",), "mosh")) == [
        'meta nfproto ipv6 udp dport 60000-61000 accept comment "mosh"'
    ]
    assert F._rule_lines(F.Rule("in", "esp", None, ("10.0.0.0/8",), 'say "hi"')) == [
        "ip saddr { 10.0.0.0/8 } meta l4proto esp accept comment \"say 'hi'\""
    ]
    with pytest.raises(ValueError, match="only inbound"):
        F._rule_lines(F.Rule("out", "tcp", "25", ANY, "smtp out"))
    with pytest.raises(ValueError, match="unknown protocol 'sctp'"):
        F._rule_lines(F.Rule("in", "sctp", "1", ANY, "x"))


@needs_root
@pytest.mark.parametrize("topology", ["ha", "single"])
def test_nft_accepts_every_edge(topology):
    s = settings_from(topology=topology)
    for h in H.hosts(s).values():
        res = _nft_check(F.hcloud_nftables(s, h, ADDR))
        assert res.returncode == 0, res.stderr
    broken = F.hcloud_nftables(s, h, ADDR).replace("jump inbound", "jump inbund", 1)
    assert _nft_check(broken).returncode != 0
