"""The lab's network namespace, without booting any host (fast; needs root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lab import config, net, util
from tests.test_firewall import PROBE, SERVER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def labns(monkeypatch):
    name = f"mailstack-labtest-{os.getpid()}"
    monkeypatch.setattr(util, "NETNS", name)
    monkeypatch.setattr(net, "NETNS", name)
    net.down()
    net.up()
    try:
        yield name
    finally:
        net.down()
    assert not net.exists()


def _mac(dev: str) -> str:
    return net.ip("-br", "link", "show", dev).stdout.split()[2]


def test_bridge_mac_survives_a_host_restart(labns):
    # A port with a MAC lower than any other would become the bridge's address if the
    # bridge had none of its own; recreating it (a host restart) would change it again.
    before = {br: _mac(br) for br in net.BRIDGE_MAC}
    assert before == net.BRIDGE_MAC
    outer = [net.link_names("mx1", which)[0] for which in ("pub", "priv")]
    for _ in range(2):
        net.add_host_links("mx1")
        for link in outer:
            net.ip("link", "set", link, "address", "00:00:00:00:00:01")
        assert {br: _mac(br) for br in net.BRIDGE_MAC} == before
    for link in outer:
        net.ip("link", "del", link)
    assert {br: _mac(br) for br in net.BRIDGE_MAC} == before


def test_internet_addresses_on_the_public_bridge(labns):
    addrs = net.ip("-br", "addr", "show", net.PUB_BRIDGE).stdout
    for a in (net.INTERNET_V4, net.OUTSIDE_V4, net.INTERNET_V6, net.OUTSIDE_V6):
        assert a in addrs


# ------------------------------------------------------------------ the edge firewall

LISTEN = [22, 24, 25, 80, 443, 465, 587, 993, 4190, 5432, 8080]
TIMEOUT = 0.7  # an answer on a veth takes well under a millisecond


class FakeHost:
    """A namespace on a host's public link (the veth the lab makes for its boots) with the
    host's public addresses and a listener on every port: the edge is what answers for it."""

    def __init__(self, labns: str, role: str):
        self.role, self.ns = role, f"{labns}-{role}"
        self.server = None
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        inner, _ = net.add_host_links(role)
        net.ip("link", "set", inner, "netns", self.ns)
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "set", inner, "up"],
            ["addr", "add", f"{net.public_v4(role)}/24", "dev", inner],
            ["addr", "add", f"{net.public_v6(role)}/64", "dev", inner, "nodad"],
        ):
            subprocess.run(["ip", "-n", self.ns, *cmd], check=True)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", SERVER, *map(str, LISTEN)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.server.stdout.readline().strip() == "ready"

    def close(self):
        if self.server and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture
def hosts(labns):
    made = []
    try:
        for role in ("mx1", "mx2"):
            made.append(FakeHost(labns, role))
        yield {h.role: h for h in made}
    finally:
        for h in made:
            h.close()


def _probe(ns: str, probes: list[tuple[str, str, int]]) -> dict[tuple[str, str, int], str]:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, str(TIMEOUT)],
        input=json.dumps(probes),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(zip(map(tuple, probes), json.loads(r.stdout)))


def _matrix(sources, dests):
    return [(src, dst, p) for src in sources for dst in dests for p in LISTEN if (":" in src) == (":" in dst)]


def test_edge_filters_like_hetzner(labns, hosts):
    s = config.settings()
    mx1 = (net.public_v4("mx1"), net.public_v6("mx1"))
    admin, stranger = (net.OUTSIDE_V4, net.OUTSIDE_V6), (net.ATTACK_V4, net.ATTACK_V6)
    # The lab's own settings: its clients inside admin.sshCidrs, the stranger outside.
    public = {25, 80, 443, 465, 587}
    # Control: with no edge every listener answers, so "dropped" below is the edge's doing.
    assert set(_probe(labns, _matrix(admin + stranger, mx1)).values()) == {"open"}

    net.edge_up(s, config.addresses(s))
    want = {
        pr: "open" if pr[2] in public | ({22} if pr[0] in admin else set()) else "dropped"
        for pr in _matrix(admin + stranger, mx1)
    }
    assert _probe(labns, list(want)) == want
    assert net.edge_dropped("mx1") >= sum(v == "dropped" for v in want.values())

    # Across the bridge from another host (inside the admin networks, so SSH too).
    peer = (net.public_v4("mx2"), net.public_v6("mx2"))
    want = {pr: "open" if pr[2] in public | {22} else "dropped" for pr in _matrix(peer, mx1)}
    assert _probe(hosts["mx2"].ns, list(want)) == want

    # Stateful: the replies to mx1's own connections (to ephemeral ports no rule opens)
    # pass mx1's edge; mx2's edge judges the way there.
    out = [(mx1[0], peer[0], 22), (mx1[1], peer[1], 25), (mx1[0], peer[0], 5432)]
    assert _probe(hosts["mx1"].ns, out) == dict(zip(out, ["open", "open", "dropped"]))

    # A port opened at the edge answers; loading the edge again closes it.
    net.edge_open("mx1", 8080)
    assert _probe(labns, [(net.ATTACK_V4, mx1[0], 8080)]) == {(net.ATTACK_V4, mx1[0], 8080): "open"}
    net.edge_up(s, config.addresses(s))
    assert _probe(labns, [(net.ATTACK_V4, mx1[0], 8080)]) == {(net.ATTACK_V4, mx1[0], 8080): "dropped"}


def test_tap_sees_only_what_passed_the_edge(labns, hosts):
    s = config.settings()
    net.edge_up(s, config.addresses(s))
    net.tap_start()
    try:
        mx1 = net.public_v4("mx1")
        _probe(
            labns,
            [
                (net.ATTACK_V4, mx1, 25),
                (net.ATTACK_V4, mx1, 22),
                (net.OUTSIDE_V4, mx1, 22),
                (net.OUTSIDE_V6, net.public_v6("mx1"), 5432),
            ],
        )
        assert net.tap_seen() == {(net.ATTACK_V4, mx1, 25), (net.OUTSIDE_V4, mx1, 22)}
    finally:
        net.tap_stop()
