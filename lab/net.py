"""The lab's network, all inside one network namespace so nothing touches this machine's
real interfaces: a "public" bridge (documentation ranges, standing in for the internet
and the servers' primary IPs) where the lab internet host lives, and a "private" bridge
with the stack's private network (10.77.1.0/24), like Hetzner's cloud network.

In front of every host's public addresses sits its Hetzner firewall (`edge_up`), rendered
from the same rules the Pulumi component creates, in this namespace: outside the host,
as Hetzner filters before packets reach a server.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailstack import firewall
from mailstack import hosts as H

from .util import NETNS, log, run

PUB_BRIDGE = "lab-pub"
PRIV_BRIDGE = "lab-priv"
PUB4_PREFIX = "198.51.100"
PUB6_PREFIX = "2001:db8:100"
INTERNET_V4 = f"{PUB4_PREFIX}.1"  # knot, pebble, apt proxy; the hosts' gateway
INTERNET_V6 = f"{PUB6_PREFIX}::1"
OUTSIDE_V4 = f"{PUB4_PREFIX}.25"  # the outside MTA (mx.outside.example.com)
OUTSIDE_V6 = f"{PUB6_PREFIX}::25"
STORAGE_V4 = f"{PUB4_PREFIX}.30"  # the backup target (SFTP), standing in for a Storage Box
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
    for a in (
        f"{INTERNET_V4}/24",
        f"{OUTSIDE_V4}/24",
        f"{STORAGE_V4}/24",
        f"{ATTACK_V4}/24",
        f"{INTERNET_V6}/64",
        f"{OUTSIDE_V6}/64",
    ):
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


# ---------------------------------------------------------------- the edge (Hetzner's firewall)
#
# The kernel passes bridged IP traffic through the namespace's inet hooks
# (bridge-nf-call-iptables, on by default in every namespace), so one table per host,
# matched on its public addresses, filters both the internet host's own connections
# (output) and host-to-host traffic across lab-pub (forward), statefully.


def _nft(text: str, what: str) -> None:
    r = run(["nft", "-f", "-"], netns=True, input=text, capture=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"nft refused {what}: {r.stderr.strip()[-800:]}")


def edge_up(settings, addresses: dict[str, H.Address]) -> None:
    """Load (or replace, in one transaction each) every host's Hetzner firewall."""
    for role, host in H.hosts(settings).items():
        _nft(firewall.hcloud_nftables(settings, host, addresses[role]), f"the edge firewall of {role}")
    log(f"edge firewall (Hetzner's rules) in front of {', '.join(H.hosts(settings))}")


def edge_open(role: str, port: int) -> None:
    """A fault: a TCP port opened at the edge too (the next `edge_up` removes it)."""
    _nft(
        f"insert rule inet {firewall.edge_table(role)} {firewall.EDGE_CHAIN} tcp dport {port} accept\n",
        f"a rule opening {port} on {role}'s edge",
    )


def edge_dropped(role: str) -> int:
    """Packets the edge of `role` dropped so far (its final rule's counter)."""
    r = run(
        ["nft", "-j", "list", "chain", "inet", firewall.edge_table(role), firewall.EDGE_CHAIN], netns=True, capture=True
    )
    for item in json.loads(r.stdout)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise LookupError(f"no counter in {role}'s edge chain")


# A tap behind the edge: the SYNs that got through it, by source, destination and port,
# as a capture on each host's link would see them. The firewall scenario reads it to tell
# the edge's drops from the host's own.
TAP = "lab_tap"


def tap_start() -> None:
    tap_stop()
    _nft(
        f"""table inet {TAP} {{
	set syn4 {{ type ipv4_addr . ipv4_addr . inet_service; flags dynamic; size 65536; }}
	set syn6 {{ type ipv6_addr . ipv6_addr . inet_service; flags dynamic; size 65536; }}
	chain post {{
		type filter hook postrouting priority 300; policy accept;
		tcp flags & (syn | ack) == syn add @syn4 {{ ip saddr . ip daddr . tcp dport }}
		tcp flags & (syn | ack) == syn add @syn6 {{ ip6 saddr . ip6 daddr . tcp dport }}
	}}
}}
""",
        "the SYN tap",
    )


def tap_seen() -> set[tuple[str, str, int]]:
    """(source, destination, port) of every SYN that passed since tap_start()."""
    seen = set()
    for name in ("syn4", "syn6"):
        r = run(["nft", "-j", "list", "set", "inet", TAP, name], netns=True, capture=True)
        for item in json.loads(r.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                src, dst, port = (elem.get("elem", elem) if isinstance(elem, dict) else elem)["concat"]
                seen.add((src, dst, int(port)))
    return seen


def tap_stop() -> None:
    run(["nft", "delete", "table", "inet", TAP], netns=True, capture=True, check=False)
