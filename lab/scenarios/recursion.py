"""The hosts' resolver in recursion mode (`resolver.forwardTo: []`, the production
default). The lab's hosts normally forward to the lab's knot; here one host's unbound is
deployed again without forwarders, so it primes from the lab root's hints, validates the
signed root against the lab root's key (lab/dns_root.py) and follows the delegations down
to the lab's zen.spamhaus.org, as a real host does from the real root. Then the lab's
forward mode is deployed back."""

from __future__ import annotations

import re

from mailstack import deploy, unbound

from .. import config, internet, machines, net, stand, steps
from ..util import wait_until
from .clients import _expect

# The stranger's address, on the lab DNSBL for the time of the scenario.
LISTED = net.ATTACK_V4
LISTED_ANSWER = "127.0.0.2"

# How smtpd, rspamd and the status check ask: the C library, through /etc/resolv.conf
# (127.0.0.1, the host's own unbound). Prints the addresses, or the error.
_LOOKUP = """
import socket, sys
try:
    print(" ".join(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], None, socket.AF_INET)})))
except socket.gaierror as e:
    print("error", e)
"""
# `. SOA` with the DO bit from 127.0.0.1: prints the rcode and whether AD (validated) is set.
_AD = """
import socket, struct
q = struct.pack(">HHHHHH", 0x4D55, 0x0100, 1, 0, 0, 1) + b"\\0" + struct.pack(">HH", 6, 1)
q += b"\\0" + struct.pack(">HHIH", 41, 1232, 0x8000, 0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("127.0.0.1", 53))
r = s.recv(4096)
print(r[3] & 0x0F, "ad" if r[3] & 0x20 else "no-ad")
"""


def _dnsbl_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + f".{internet.DNSBL_ZONE}"


def _lookup(role: str, name: str) -> str:
    return machines.exec_in(role, ["python3", "-c", _LOOKUP, name], timeout=30).stdout.strip()


def _ptr(role: str, ip: str) -> str:
    """The name `getent hosts` finds for ip through the host's resolver ("" if none)."""
    out = machines.exec_in(role, ["getent", "hosts", ip], timeout=30).stdout.split()
    return out[1] if len(out) > 1 else ""


def _knot(listed: dict[str, str] | None) -> None:
    stand.republish(config.running_settings(), dnsbl_listed=listed)


def _deploy_unbound(role: str, **overrides) -> None:
    """The unbound part of the `services-<role>` step (the bundle services.py composes),
    run the way the deploy runs it; the other daemons of the step don't change here."""
    s = config.running_settings(**overrides)
    ctx = config.context(s, config.load_or_make_secrets(s))
    host = ctx.hosts[role]
    steps.run_step(ctx, deploy.Step(f"services-{role}", role, "unbound", lambda c: unbound.bundle(c, host)))


def _control(role: str, *args: str) -> str:
    return machines.exec_in(role, ["unbound-control", *args], timeout=30).stdout


def s_recursion() -> str:
    """(resolver) forwardTo: [] recurses from the lab's signed root; a DNSBL answer comes through it."""
    s = config.running_settings()
    role = config.context(s, config.load_or_make_secrets(s)).host_for("mx").role
    name = _dnsbl_name(LISTED)
    notes = []
    try:
        _knot({LISTED: LISTED_ANSWER})
        wait_until(lambda: _lookup(role, name) == LISTED_ANSWER, 10, f"{name} through the forwarder")

        _deploy_unbound(role, resolver={"forwardTo": []})
        conf = machines.sh(role, f"cat {unbound.CONF}").stdout
        _expect("forward-zone" not in conf and "forward-addr" not in conf, f"recursion mode still forwards:\n{conf}")
        _expect(_control(role, "list_forwards").strip() == "", "unbound-control lists forwarders")
        got = _lookup(role, name)
        _expect(got == LISTED_ANSWER, f"recursion mode: {name} -> {got!r}, not {LISTED_ANSWER}")
        clean = _lookup(role, _dnsbl_name(net.OUTSIDE_V4))
        _expect(clean.startswith("error"), f"recursion mode: an unlisted address answers {clean!r}")
        notes.append(f"no forward-zone; {name} -> {got}")

        # Through the root: unbound's delegation for the DNSBL starts at the hints' name
        # server, and its cache holds the root's key and the root's signed proof (NSEC)
        # that zen.spamhaus.org's delegation is unsigned; a forwarder's answer has neither.
        lookup = _control(role, "lookup", internet.DNSBL_ZONE)
        _expect(
            re.search(rf"^\.\s+\d+\s+IN\s+NS\s+{re.escape(internet.NS_NAME)}", lookup, re.M) is not None,
            f"the delegation for {internet.DNSBL_ZONE} does not start at the lab root:\n{lookup}",
        )
        cache = _control(role, "dump_cache")
        _expect(re.search(r"^\.\s+\d+\s+IN\s+DNSKEY\s+257 ", cache, re.M) is not None, "no root DNSKEY in the cache")
        _expect(
            re.search(rf"^{re.escape(internet.DNSBL_ZONE)}\.\s+\d+\s+IN\s+NSEC\s", cache, re.M) is not None,
            f"no NSEC from the root for {internet.DNSBL_ZONE} in the cache",
        )
        ad = machines.exec_in(role, ["python3", "-c", _AD], timeout=30).stdout.split()
        _expect(ad == ["0", "ad"], f"`. SOA` is not validated (rcode, flag: {ad})")
        notes.append("delegation from the lab root, root DNSKEY and NSEC cached, `. SOA` validated (AD)")
        # Expected in the lab only: unbound's default local zones answer reverse names of
        # documentation ranges (the lab's 198.51.100.0/24) itself, NXDOMAIN.
        ptr = _ptr(role, net.OUTSIDE_V4)
        _expect(ptr == "", f"recursion mode: PTR of {net.OUTSIDE_V4} answers {ptr!r}")
    finally:
        try:
            _deploy_unbound(role)  # the lab's forward mode again
            conf = machines.sh(role, f"cat {unbound.CONF}").stdout
            _expect(f"forward-addr: {net.INTERNET_V4}" in conf, f"forward mode not restored:\n{conf}")
            got = _lookup(role, name)
            _expect(got == LISTED_ANSWER, f"forward mode again: {name} -> {got!r}")
            ptr = _ptr(role, net.OUTSIDE_V4)
            _expect(ptr == internet.OUTSIDE_MX, f"forward mode again: PTR of {net.OUTSIDE_V4} -> {ptr!r}")
        finally:
            _knot(None)
    notes.append(f"forward mode restored: {name} -> {LISTED_ANSWER}, PTR {net.OUTSIDE_V4} -> {internet.OUTSIDE_MX}")
    return "; ".join(notes)
