"""unbound in recursion mode (`resolver.forwardTo: []`, the default): the rendered
config, in Debian's layout, resolves a DNSBL name from a signed root through its
delegations, validating the root with the root's key; with another key it answers
nothing. The root, its hints and its key are the lab's (lab/dns_root.py, lab/internet.py),
served by a real knot on port 53 of a test network namespace."""

from __future__ import annotations

import os
import signal

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from lab import dns_root, internet, net
from lab.netns import inside
from mailstack import unbound
from tests.conftest import make_context, settings_from
from tests.daemons import unbound as unbound_harness
from tests.daemons.knot import Knot
from tests.daemons.netns import Netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

LISTED = "192.0.2.99"
UNLISTED = "192.0.2.98"
# The real root's key-signing key (KSK-2017): any key but the lab root's.
ICANN_DS = ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n"


def _dnsbl(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + f".{internet.DNSBL_ZONE}."


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    """A knot on the lab name server's address (198.51.100.1:53) serving the lab's zones
    and DNSBL, under the lab's signed root; and the root's key as knot signed it."""
    base = tmp_path_factory.mktemp("lab-root")
    ns = Netns(base, net.INTERNET_V4, [])
    zones = {**internet.lab_zones([]), **internet.dnsbl_zone({LISTED: "127.0.0.2"})}
    zones.update(internet.root_zone(list(zones)))
    knot = Knot(zones, ns=ns, address=net.INTERNET_V4)
    try:
        knot.start()
        with knot.inside():
            anchor = dns_root.trust_anchor(net.INTERNET_V4)
        yield ns, knot, anchor
    finally:
        knot.stop()
        ns.close()


def _recursion_conf() -> str:
    ctx = make_context(settings_from(resolver={"forwardTo": []}))
    return unbound.bundle(ctx, ctx.hosts["mx1"]).file(unbound.CONF).content


def _ask(ns, name: str, rtype: str = "A"):
    q = dns.message.make_query(name, rtype, want_dnssec=True)
    with inside(f"/proc/{ns.server.pid}/ns/net"):
        return dns.query.udp(q, "127.0.0.1", port=53, timeout=10)


def _stop(proc) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def _hints() -> str:
    return dns_root.hints(internet.NS_NAME, net.INTERNET_V4, net.INTERNET_V6)


def test_knot_answers_ds_for_a_child_from_the_signed_root(lab_root):
    """knot serves the root and its children: a DS query for a child is answered from
    the parent, the root's signed proof that the delegation is unsigned."""
    _, knot, _ = lab_root
    r = knot.query(internet.DNSBL_ZONE, "DS", dnssec=True)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and not r.answer
    nsec = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.NSEC]
    assert [str(rr.name) for rr in nsec] == [f"{internet.DNSBL_ZONE}."]
    bitmap = nsec[0][0].to_text().split()[1:]  # the types at the delegation: NS, no DS
    assert "NS" in bitmap and "DS" not in bitmap, bitmap
    assert any(rr.rdtype == dns.rdatatype.RRSIG and rr.name == nsec[0].name for rr in r.authority)


def test_recursion_resolves_a_dnsbl_through_the_signed_root(lab_root, tmp_path):
    ns, _, anchor = lab_root
    rendered = _recursion_conf()
    assert "forward-zone" not in rendered
    proc = unbound_harness.start_rendered(ns, tmp_path / "unbound", rendered, _hints(), anchor)
    try:
        r = _ask(ns, _dnsbl(LISTED))
        assert dns.rcode.to_text(r.rcode()) == "NOERROR", r
        assert {rd.to_text() for rr in r.answer for rd in rr} == {"127.0.0.2"}
        assert _ask(ns, _dnsbl(UNLISTED)).rcode() == dns.rcode.NXDOMAIN
        # The root itself validated against the key: AD on its signed SOA.
        root_soa = _ask(ns, ".", "SOA")
        assert root_soa.rcode() == dns.rcode.NOERROR and root_soa.flags & dns.flags.AD, root_soa
    finally:
        _stop(proc)


def test_recursion_with_another_root_key_answers_nothing(lab_root, tmp_path):
    """Validation bites: with a key the root did not sign with, every answer is bogus."""
    ns, _, _ = lab_root
    proc = unbound_harness.start_rendered(ns, tmp_path / "unbound", _recursion_conf(), _hints(), ICANN_DS)
    try:
        assert _ask(ns, _dnsbl(LISTED)).rcode() == dns.rcode.SERVFAIL
    finally:
        _stop(proc)
