"""Probes from the operator's side: DNS look-ups here; TCP connects, TLS handshakes, SMTP,
ManageSieve and HTTPS sessions through probe.py (the same code the MX hosts run looking
at each other). Every network call has a timeout; the results are plain data for
decide.py."""

from __future__ import annotations

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

from . import probe
from .expect import Environment

TIMEOUT = probe.TIMEOUT


# ------------------------------------------------------------------ DNS


def resolver(env: Environment) -> dns.resolver.Resolver:
    if env.resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [env.resolver]
    else:
        r = dns.resolver.Resolver()
    r.lifetime = TIMEOUT
    r.cache = None
    return r


def normalise(rtype: str, rd) -> str:
    """One comparable text per rdata: TXT as its concatenated text (the split into
    character-strings is the DNS host's business), the rest in canonical lower case."""
    if rtype == "TXT":
        return b"".join(rd.strings).decode(errors="replace")
    return rd.to_text().lower()


def parse_values(rtype: str, values) -> set[str]:
    return {normalise(rtype, dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), v)) for v in values}


def lookup(env: Environment, name: str, rtype: str) -> tuple[set[str] | None, str | None]:
    """(normalised values, error). NXDOMAIN / no data is an empty set, not an error."""
    r = resolver(env)
    with env.vantage():
        try:
            ans = r.resolve(name, rtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return set(), None
        except (dns.exception.DNSException, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:160]
    if ans.rrset is None:
        return set(), None
    return {normalise(rtype, rd) for rd in ans.rrset}, None


def reverse(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text()


# ------------------------------------------------------------------ sockets, TLS, SMTP, HTTPS
# The probes themselves live in probe.py (standard library only), shared with the MX
# hosts' view of each other; here they start from the operator's vantage point.

TlsResult = probe.TlsResult
SmtpResult = probe.SmtpResult


def origin(env: Environment) -> probe.Origin:
    return probe.Origin(
        helo=env.helo, cafile=env.cafile, source_v4=env.source_v4, source_v6=env.source_v6, vantage=env.vantage
    )


def port_open(env: Environment, ip: str, port: int) -> bool:
    return probe.port_open(origin(env), ip, port)


def certificate(env: Environment, ip: str, port: int, sni: str) -> TlsResult:
    return probe.certificate(origin(env), ip, port, sni)


def smtp(env: Environment, ip: str, port: int, sni: str, relay_probe: str | None = None) -> SmtpResult:
    return probe.smtp(origin(env), ip, port, sni, relay_probe)


def smtps_banner(env: Environment, ip: str, port: int, sni: str) -> tuple[str | None, str | None]:
    return probe.smtps_banner(origin(env), ip, port, sni)


def https_get(env: Environment, ip: str, name: str, path: str) -> tuple[int | None, str | None, str | None]:
    """(status, body, error) of GET https://name/path, connecting to ip."""
    return probe.https_get(origin(env), ip, name, path)
