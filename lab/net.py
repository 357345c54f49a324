"""The lab's network, all inside one network namespace so nothing touches this machine's
real interfaces: a "public" bridge (documentation ranges, standing in for the internet
and the servers' primary IPs) where the lab internet host lives, and a "private" bridge
with the stack's private network (10.77.1.0/24), like Hetzner's cloud network.
"""
from __future__ import annotations

from pathlib import Path

from .util import NETNS, log, run

PUB_BRIDGE = "lab-pub"
PRIV_BRIDGE = "lab-priv"
PUB4_PREFIX = "198.51.100"
PUB6_PREFIX = "2001:db8:100"
INTERNET_V4 = f"{PUB4_PREFIX}.1"      # knot, pebble, apt proxy; the hosts' gateway
INTERNET_V6 = f"{PUB6_PREFIX}::1"
OUTSIDE_V4 = f"{PUB4_PREFIX}.25"      # the outside MTA (mx.outside.example.com)
OUTSIDE_V6 = f"{PUB6_PREFIX}::25"
STORAGE_V4 = f"{PUB4_PREFIX}.30"      # the backup target (SFTP), standing in for a Storage Box
# A stranger guessing passwords (the brute-force scenario): outside lab/stack.yaml's
# admin.sshCidrs, unlike every other lab client, so fail2ban may ban it.
ATTACK_V4 = f"{PUB4_PREFIX}.200"
ATTACK_V6 = f"{PUB6_PREFIX}::1:66"
HOST_NUM = {"mx1": 11, "imap": 12, "mx2": 13}


def public_v4(role: str) -> str:
    return f"{PUB4_PREFIX}.{HOST_NUM[role]}"


def public_v6(role: str) -> str:
    return f"{PUB6_PREFIX}::{HOST_NUM[role]}"


def mac(role: str, which: str) -> str:
    return f"02:77:00:00:{HOST_NUM[role]:02x}:{1 if which == 'pub' else 2:02x}"


# A bridge without its own address takes the lowest MAC of its ports, so it changed
# whenever a host's veth was recreated (a host restart). The internet host's addresses
# live on the bridge: the other hosts kept the old MAC in their neighbour cache and could
# not answer it for several seconds after any restart.
BRIDGE_MAC = {PUB_BRIDGE: "02:77:00:00:00:01", PRIV_BRIDGE: "02:77:00:00:00:02"}


def exists() -> bool:
    return Path(f"/run/netns/{NETNS}").exists()


def ip(*args: str, check: bool = True):
    return run(["ip", "-n", NETNS, *args], check=check, capture=True)


def up() -> None:
    run(["ip", "netns", "add", NETNS])
    sysctl = lambda k, v: run(["sysctl", "-q", "-w", f"{k}={v}"], netns=True, capture=True)
    # Duplicate address detection would delay every address by seconds, for nothing here.
    sysctl("net.ipv6.conf.all.accept_dad", 0)
    sysctl("net.ipv6.conf.default.accept_dad", 0)
    ip("link", "set", "lo", "up")
    for br in (PUB_BRIDGE, PRIV_BRIDGE):
        ip("link", "add", br, "address", BRIDGE_MAC[br], "type", "bridge")
        ip("link", "set", br, "up")
    for a in (f"{INTERNET_V4}/24", f"{OUTSIDE_V4}/24", f"{STORAGE_V4}/24", f"{ATTACK_V4}/24",
              f"{INTERNET_V6}/64", f"{OUTSIDE_V6}/64"):
        ip("addr", "add", a, "dev", PUB_BRIDGE)
    # Deprecated at once, so the kernel never picks it as a source by itself; only the
    # scenario binds it.
    ip("addr", "add", f"{ATTACK_V6}/64", "dev", PUB_BRIDGE, "preferred_lft", "0")
    log(f"network namespace {NETNS}: {PUB_BRIDGE} {PUB4_PREFIX}.0/24 {PUB6_PREFIX}::/64, {PRIV_BRIDGE}")


def link_names(role: str, which: str) -> tuple[str, str]:
    """(bridge side, container side) of a host's veth pair on the "pub" or "priv" bridge."""
    return f"{which[:2]}-{role}", f"{which[:2]}c-{role}"


def add_host_links(role: str) -> tuple[str, str]:
    """Fresh veth pairs for one boot of a host (they die with the container's namespace).
    Returns the container-side names, to hand to systemd-nspawn --network-interface."""
    names = []
    for which, br in (("pub", PUB_BRIDGE), ("priv", PRIV_BRIDGE)):
        outer, inner = link_names(role, which)
        ip("link", "del", outer, check=False)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "address", mac(role, which))
        ip("link", "set", outer, "master", br)
        ip("link", "set", outer, "up")
        names.append(inner)
    return names[0], names[1]


def down() -> None:
    if exists():
        run(["ip", "netns", "del", NETNS], check=False)
