"""The lab's network namespace, without booting any host (fast; needs root)."""
from __future__ import annotations

import os

import pytest

from lab import net, util

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
