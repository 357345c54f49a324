"""The lab's DNS root: a signed "." that delegates every zone the lab's knot serves, and
what a host needs to recurse from it instead of from the real root servers (root hints
naming the lab's name server, the lab root's key as trust anchor).

In forward mode (`resolver.forwardTo` in lab/stack.yaml) the hosts never look at any of
this: knot answers every zone authoritatively. With `forwardTo: []` (the production
default) unbound recurses: it primes from the hints, validates the root's DNSKEY against
the anchor, follows the delegations and proves them insecure with the root's NSEC records.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

# Where the lab's files land on a host, none of them a conffile of Debian's unbound
# package (dpkg would stop cloud-init's install to ask about a pre-existing one).
HINTS = "/etc/unbound/lab-root.hints"
CONF = "/etc/unbound/unbound.conf.d/lab-root.conf"
# Debian's unbound keeps its RFC 5011 anchor for "." in this file
# (root-auto-trust-anchor-file.conf). A second anchor for "." in another file makes
# unbound refuse to start ("anchor cannot be with and without autotrust"), so the lab's
# key goes here, and unbound-helper's copy of the ICANN key over it at every start
# (ROOT_TRUST_ANCHOR_UPDATE) is switched off; the package ships no /etc/default/unbound.
ROOT_KEY = "/var/lib/unbound/root.key"
DEFAULTS = "/etc/default/unbound"

# RFC 8624's recommended algorithm; NSEC (knot's default), so a resolver can read every
# proof of an insecure delegation.
KNOT_POLICY = [
    "policy:",
    "  - id: lab-root",
    "    algorithm: ecdsap256sha256",
    "    nsec3: off",
]
KNOT_ZONE_SIGNING = ["    dnssec-signing: on", "    dnssec-policy: lab-root"]

HINTS_TTL = 3600000


def zone(children: list[str], ns_name: str, ns_v4: str, ns_v6: str | None, rname: str, ttl: int = 60) -> str:
    """The root zone: SOA, the lab's name server as the root's, one delegation per child
    zone (all to the same server, which also serves them) and the name server's glue."""
    ns = ns_name.rstrip(".") + "."
    lines = [
        "$ORIGIN .",
        f"$TTL {ttl}",
        f". IN SOA {ns} {rname} 1 60 60 3600 {ttl}",
        f". IN NS {ns}",
    ]
    lines += [f"{c.rstrip('.')}. IN NS {ns}" for c in sorted(children) if c.strip(".")]
    lines.append(f"{ns} IN A {ns_v4}")
    if ns_v6:
        lines.append(f"{ns} IN AAAA {ns_v6}")
    return "\n".join(lines) + "\n"


def hints(ns_name: str, ns_v4: str, ns_v6: str | None) -> str:
    """unbound's root-hints file, in the format of the real one (named.cache)."""
    ns = ns_name.rstrip(".") + "."
    lines = [f".\t{HINTS_TTL}\tIN\tNS\t{ns}", f"{ns}\t{HINTS_TTL}\tIN\tA\t{ns_v4}"]
    if ns_v6:
        lines.append(f"{ns}\t{HINTS_TTL}\tIN\tAAAA\t{ns_v6}")
    return "\n".join(lines) + "\n"


def trust_anchor(server: str, port: int = 53) -> str:
    """The root's key-signing key(s) as knot serves them once it has signed: DNSKEY
    records with the SEP flag (257), one per line, as an anchor file."""
    q = dns.message.make_query(".", "DNSKEY", want_dnssec=True)
    r = dns.query.tcp(q, server, port=port, timeout=3)
    keys = [
        f". IN DNSKEY {rd.to_text(chunksize=0)}"
        for rrset in r.answer
        if rrset.rdtype == dns.rdatatype.DNSKEY
        for rd in rrset
        if rd.flags == 257
    ]
    if not keys or not r.flags & dns.flags.AA:
        raise RuntimeError(f"no signed root at {server}:{port} (answer: {r.to_text()[:300]})")
    return "\n".join(keys) + "\n"


def unbound_conf(hints_path: str = HINTS) -> str:
    """The lab-only drop-in: prime from the lab's hints instead of the compiled-in ones."""
    return f'# Lab only (lab/dns_root.py): the lab root, not the real one.\nserver:\n  root-hints: "{hints_path}"\n'


def host_files(hints_text: str, anchor_text: str) -> dict[str, str]:
    """Path on the host -> content, written into its overlay before it boots."""
    return {
        HINTS: hints_text,
        CONF: unbound_conf(),
        ROOT_KEY: anchor_text,
        DEFAULTS: "# Lab only (lab/dns_root.py): keep the lab root's key in "
        + ROOT_KEY
        + ".\nROOT_TRUST_ANCHOR_UPDATE=false\n",
    }
