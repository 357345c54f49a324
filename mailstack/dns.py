"""Every DNS record the mail system needs, as plain data.

The Pulumi component (hcloud zones/RRsets), the "don't manage the zone" stack output and
the local lab's knot server all read the same `records()`, so what is tested here is what
gets published. Values are in zone-file presentation format with absolute names.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import dkim
from . import hosts as H
from .settings import Settings

# Hetzner's authoritative servers, which serve zones created through the Cloud API.
HETZNER_NAMESERVERS = [
    "hydrogen.ns.hetzner.com.",
    "oxygen.ns.hetzner.com.",
    "helium.ns.hetzner.de.",
]
ANYWHERE = "."  # SRV target meaning "service not offered" (RFC 2782, RFC 6186 section 3.4)


@dataclass(frozen=True)
class Record:
    zone: str
    name: str  # relative to zone, "@" for the apex
    type: str
    ttl: int
    values: tuple[str, ...]  # presentation format; TXT already quoted and split

    @property
    def fqdn(self) -> str:
        return f"{self.zone}." if self.name == "@" else f"{self.name}.{self.zone}."


@dataclass(frozen=True)
class Ptr:
    ip: str
    name: str  # fqdn with trailing dot, equal to the host's A/AAAA name
    role: str
    family: int  # 4 or 6


# --------------------------------------------------------------------------- helpers


def zones(settings: Settings) -> list[str]:
    return list(dict.fromkeys([*settings.domains, settings.host_domain]))


def txt(text: str) -> str:
    """One TXT value: character-strings of at most 255 bytes each (RFC 1035 3.3), quoted.
    Resolvers concatenate them back, so where the split falls doesn't matter."""
    raw = text.encode()
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join('"' + _escape(c.decode()) + '"' for c in chunks)


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def txt_text(value: str) -> str:
    """Inverse of `txt`: the concatenated content of a presentation-format TXT value."""
    out: list[str] = []
    cur: list[str] = []
    i, in_q = 0, False
    while i < len(value):
        c = value[i]
        if c == '"':
            if in_q:
                out.append("".join(cur))
                cur = []
            in_q = not in_q
        elif c == "\\" and in_q:
            i += 1
            cur.append(value[i])
        elif in_q:
            cur.append(c)
        i += 1
    return "".join(out)


def dkim_public_value(public_key_pem: str) -> str:
    """Base64 DER SubjectPublicKeyInfo, the `p=` of a DKIM key record (RFC 6376 3.6.1)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem.encode())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def dkim_public_from_private(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def dkim_text(public_value: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_value}"


def _mx_hosts(settings: Settings) -> list[H.Host]:
    """Primary MX first, then the backup: the order of the MX preferences."""
    hs = H.hosts(settings)
    return [h for h in hs.values() if h.runs(H.MX)] + [
        h for h in hs.values() if h.runs(H.BACKUP_MX) and not h.runs(H.MX)
    ]


def mta_sts_policy(settings: Settings) -> str:
    # RFC 8461 3.2: CRLF-separated key/value pairs.
    lines = ["version: STSv1", f"mode: {settings.mta_sts.mode}"]
    lines += [f"mx: {h.fqdn}" for h in _mx_hosts(settings)]
    lines.append(f"max_age: {settings.mta_sts.max_age}")
    return "".join(f"{line}\r\n" for line in lines)


def mta_sts_policy_id(settings: Settings) -> str:
    # Senders refetch the policy only when the id changes, so tie it to the content.
    return hashlib.sha256(mta_sts_policy(settings).encode()).hexdigest()[:20]


def _v6(ip: str) -> str:
    return str(ipaddress.ip_address(H.ipv6_host_address(ip)))


def _v4(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def _relative(fqdn: str, zone: str) -> str:
    fqdn = fqdn.rstrip(".")
    if fqdn == zone:
        return "@"
    if not fqdn.endswith("." + zone):
        raise ValueError(f"{fqdn} is not inside zone {zone}")
    return fqdn[: -len(zone) - 1]


def _zone_of(name: str, zone_list: Iterable[str]) -> str | None:
    """The most specific of our zones that contains `name`."""
    best = None
    for z in zone_list:
        if (name == z or name.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


# --------------------------------------------------------------------------- records


def records(
    settings: Settings,
    addresses: Mapping[str, H.Address],
    dkim_public: Mapping[str, str],
    dkim_published: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Record]:
    """dkim_public: domain -> the signing key's p= value. dkim_published: selector ->
    domain -> p= of the other generations the rotation schedule publishes now (the next
    one before it signs, the previous one during its grace; mailstack/dkim.py)."""
    hs = H.hosts(settings)
    ttl = settings.dns.ttl
    zone_list = zones(settings)
    rrsets: dict[tuple[str, str, str], list[str]] = {}

    def add(fqdn: str, rtype: str, *values: str) -> None:
        zone = _zone_of(fqdn.rstrip("."), zone_list)
        if zone is None:
            raise ValueError(f"{fqdn} is in none of the hosted zones {zone_list}")
        vals = rrsets.setdefault((zone, _relative(fqdn, zone), rtype), [])
        vals.extend(v for v in values if v not in vals)

    def address_records(fqdn: str, role: str) -> None:
        add(fqdn, "A", _v4(addresses[role].ipv4))
        add(fqdn, "AAAA", _v6(addresses[role].ipv6))

    mx_hosts = _mx_hosts(settings)
    imap = H.find(hs, H.IMAP)
    submission = H.find(hs, H.SUBMISSION)
    web = H.find(hs, H.WEB)
    smtp_fqdn = settings.fqdn("smtp")
    imap_fqdn = settings.fqdn("imap")

    # Host names: A/AAAA that the PTRs point back at, and a HELO identity SPF so a
    # receiver's SPF check of the EHLO name (RFC 7208 2.3) passes too.
    for h in hs.values():
        address_records(h.fqdn, h.role)
        if h in mx_hosts:
            add(h.fqdn, "TXT", txt("v=spf1 a -all"))
    # Service names are A/AAAA rather than CNAMEs, so they work for any client and for
    # the certificate's HTTP-01 validation without a second lookup.
    address_records(imap_fqdn, imap.role)
    address_records(smtp_fqdn, submission.role)

    # Only the MX hosts send: mx1 as the outbound relay, mx2 when it bounces or relays.
    spf = ["v=spf1"]
    for h in mx_hosts:
        spf += [f"ip4:{_v4(addresses[h.role].ipv4)}", f"ip6:{_v6(addresses[h.role].ipv6)}"]
    spf.append("-all")
    sts_id = mta_sts_policy_id(settings)
    dmarc_domain = settings.dmarc_rua.rsplit("@", 1)[1]
    keys = dkim.plan(settings)
    published = {**(dkim_published or {}), keys.signing.selector: dkim_public}

    for d in settings.domains:
        for pref, h in zip((10, 20), mx_hosts):
            add(d, "MX", f"{pref} {h.fqdn}.")
        add(d, "TXT", txt(" ".join(spf)))
        for sel in keys.selectors:
            if d not in published.get(sel, {}):
                raise ValueError(
                    f"no DKIM public key for {d} (selector {sel}); every mail "
                    "domain is signed and every published generation has a key"
                )
            add(f"{sel}._domainkey.{d}", "TXT", txt(dkim_text(published[sel][d])))
        dmarc = [
            "v=DMARC1",
            f"p={settings.dmarc.policy}",
            f"rua=mailto:{settings.dmarc_rua}",
            f"pct={settings.dmarc.pct}",
            # Relaxed alignment: mail from the HELO host names and subdomains still aligns.
            "adkim=r",
            "aspf=r",
        ]
        add(f"_dmarc.{d}", "TXT", txt("; ".join(dmarc)))
        # RFC 7489 7.1: a report address in another domain must authorise this one.
        if dmarc_domain != d and dmarc_domain in zone_list:
            add(f"{d}._report._dmarc.{dmarc_domain}", "TXT", txt("v=DMARC1"))
        add(f"_mta-sts.{d}", "TXT", txt(f"v=STSv1; id={sts_id}"))
        add(f"_smtp._tls.{d}", "TXT", txt(f"v=TLSRPTv1; rua=mailto:{settings.tls_rpt_rua}"))
        for label in ("mta-sts", "autoconfig", "autodiscover"):
            address_records(f"{label}.{d}", web.role)
        # RFC 6186 / RFC 8314: implicit TLS preferred, the rest explicitly not offered.
        add(f"_submissions._tcp.{d}", "SRV", f"0 1 465 {smtp_fqdn}.")
        add(f"_submission._tcp.{d}", "SRV", f"0 1 587 {smtp_fqdn}.")
        add(f"_imaps._tcp.{d}", "SRV", f"0 1 993 {imap_fqdn}.")
        add(f"_imap._tcp.{d}", "SRV", f"0 0 0 {ANYWHERE}")
        add(f"_pop3._tcp.{d}", "SRV", f"0 0 0 {ANYWHERE}")
        add(f"_pop3s._tcp.{d}", "SRV", f"0 0 0 {ANYWHERE}")
        add(f"_sieve._tcp.{d}", "SRV", f"0 1 4190 {imap_fqdn}.")
        add(f"_autodiscover._tcp.{d}", "SRV", f"0 1 443 autodiscover.{d}.")

    for z in zone_list:
        add(
            z,
            "CAA",
            f'0 issue "{settings.caa_issuer}"',
            '0 issuewild ";"',  # nothing here needs a wildcard certificate
            f'0 iodef "mailto:{settings.acme.email}"',
        )

    out = [Record(z, n, t, ttl, tuple(sorted(v))) for (z, n, t), v in rrsets.items()]
    return sorted(out, key=_sort_key)


def _sort_key(r: Record) -> tuple:
    return (r.zone, r.name != "@", r.name, r.type)


def records_table(recs: Iterable[Record]) -> list[dict]:
    return [{"zone": r.zone, "name": r.name, "type": r.type, "ttl": r.ttl, "values": list(r.values)} for r in recs]


# --------------------------------------------------------------------------- reverse DNS


def reverse_pointer(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def ptr_records(settings: Settings, addresses: Mapping[str, H.Address]) -> list[Ptr]:
    out = []
    for role, h in H.hosts(settings).items():
        a = addresses[role]
        out.append(Ptr(_v4(a.ipv4), f"{h.fqdn}.", role, 4))
        out.append(Ptr(_v6(a.ipv6), f"{h.fqdn}.", role, 6))
    return out


def _reverse_zone(ip: str, v4_prefix: int, v6_prefix: int) -> str:
    addr = ipaddress.ip_address(ip)
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    labels = addr.reverse_pointer.split(".")
    per = 8 if addr.version == 4 else 4  # octets vs nibbles
    if prefix % per:
        raise ValueError(f"/{prefix} is not on a {per}-bit boundary")
    host_labels = (addr.max_prefixlen - net.prefixlen) // per
    return ".".join(labels[host_labels:])


def reverse_records(ptrs: Iterable[Ptr], ttl: int = 3600, v4_prefix: int = 24, v6_prefix: int = 64) -> list[Record]:
    """PTRs grouped into reverse zones (/24 and /64 by default), for a local server."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for p in ptrs:
        zone = _reverse_zone(p.ip, v4_prefix, v6_prefix)
        name = _relative(reverse_pointer(p.ip), zone)
        vals = grouped.setdefault((zone, name), [])
        if p.name not in vals:
            vals.append(p.name)
    return sorted(
        (Record(z, n, "PTR", ttl, tuple(sorted(v))) for (z, n), v in grouped.items()),
        key=_sort_key,
    )


# --------------------------------------------------------------------------- zone files


def zone_file(
    zone: str,
    recs: Iterable[Record],
    nameservers: list[str] = HETZNER_NAMESERVERS,
    serial: int = 1,
    hostmaster: str | None = None,
) -> str:
    """RFC 1035 master file for `zone` holding the records of `recs` that are in it."""
    ns = [n if n.endswith(".") else n + "." for n in nameservers]
    mine = [r for r in recs if r.zone == zone]
    ttl = min((r.ttl for r in mine), default=3600)
    rname = hostmaster or f"hostmaster.{zone}."
    lines = [f"$ORIGIN {zone}.", f"$TTL {ttl}"]
    if ns:
        lines.append(f"@ {ttl} IN SOA {ns[0]} {rname} {serial} 86400 7200 3600000 300")
        lines += [f"@ {ttl} IN NS {n}" for n in ns]
    else:
        # For a DNS host we don't manage: its own SOA and NS stay as they are.
        lines.append("; SOA and NS records: keep the ones your DNS host provides")
    for r in sorted(mine, key=_sort_key):
        lines += [f"{r.name} {r.ttl} IN {r.type} {v}" for v in r.values]
    return "\n".join(lines) + "\n"


def reverse_zone_files(
    ptrs: Iterable[Ptr],
    nameservers: list[str] = HETZNER_NAMESERVERS,
    ttl: int = 3600,
    v4_prefix: int = 24,
    v6_prefix: int = 64,
) -> dict[str, str]:
    """zone name -> zone file text for every reverse zone the PTRs fall in."""
    recs = reverse_records(ptrs, ttl, v4_prefix, v6_prefix)
    return {z: zone_file(z, recs, nameservers) for z in dict.fromkeys(r.zone for r in recs)}
