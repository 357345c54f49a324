"""What should be true, derived from the stack's own rendering (never a hand-kept list),
and the environment the checks run in (real stack or lab)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from .. import dkim, dns, dovecot, firewall, postgresql, rspamd, supervision, tls
from .. import hosts as H
from ..settings import Settings

# Where the backup job (another issue) reports its last run; one constant so the two
# sides can be aligned: {"finished": <epoch>, "result": "ok" | "<error text>", ...}.
REBOOT_REQUIRED_FILE = "/run/reboot-required"
# DNSBLs asked for our addresses (IPv6 only where the list supports it).
DNSBLS_V4 = ("zen.spamhaus.org", "b.barracudacentral.org", "bl.spamcop.net", "psbl.surriel.com")
DNSBLS_V6 = ("zen.spamhaus.org",)
# A recipient outside every stack's domains, for the open-relay probe.
RELAY_PROBE_RCPT = "relay-probe@example.com"
# Ports the matrix probes on every host: every port any rule opens anywhere, every
# private service port, and the usual suspects that must never be open.
EXTRA_SCAN_PORTS = (21, 23, 53, 110, 143, 995, 3306, 6379, 8080, 8443, 11332, 11333, 11334)
# Implicit-TLS and STARTTLS ports whose certificate is checked, and the name a client
# asks for on each (SNI): services names, not host names, where clients use those.
TLS_PORTS = (25, 465, 587, 993, 4190, 443)


@dataclass
class Environment:
    """Everything the checks need to know about where they run."""

    settings: Settings
    addresses: Mapping[str, H.Address]
    dkim_public: Mapping[str, str]  # domain -> base64 p= value
    nameservers: Mapping[str, list[str]]  # zone -> expected NS names
    run_on: Callable[[str, str], str] | None  # (role, bash program) -> stdout, as root
    resolver: str | None = None  # DNS server for outside look-ups (None: system)
    cafile: str | None = None  # trust store for TLS (None: system)
    helo: str = "status-probe.invalid"
    # Outside probes run inside this (the lab: its internet namespace).
    vantage: Callable[[], AbstractContextManager] = field(default=nullcontext)
    source_v4: str | None = None
    source_v6: str | None = None
    # With DKIM rotation, the generations published beside the signing one:
    # selector -> domain -> p= (mailstack/dkim.py).
    dkim_published: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def outbound_target(self) -> str:
        return self.settings.status.outbound_probe

    @property
    def hosts(self) -> dict[str, H.Host]:
        return H.hosts(self.settings)

    def records(self) -> list[dns.Record]:
        return dns.records(self.settings, self.addresses, self.dkim_public, self.dkim_published)

    def ptrs(self) -> list[dns.Ptr]:
        return dns.ptr_records(self.settings, self.addresses)

    def v4(self, role: str) -> str:
        return str(ipaddress.ip_address(self.addresses[role].ipv4))

    def v6(self, role: str) -> str:
        return str(ipaddress.ip_address(H.ipv6_host_address(self.addresses[role].ipv6)))


def open_ports(host: H.Host) -> set[int]:
    """What answers from the operator's machine: the Hetzner rules' TCP ports (SSH from
    admin.sshCidrs, where the operator is: the deploy steps run over SSH)."""
    return {firewall.SSH_PORT} | {p for proto, p in firewall.public_ports(host) if proto == "tcp"}


def peer_open_ports(env: Environment, host: H.Host, peer: str, family: int) -> set[int]:
    """What answers on `host`'s public address of `family` when `peer` (another stack
    host) connects from its own public address: the same rendering as the rules, read
    for that source (firewall.reachable_from)."""
    src = env.v4(peer) if family == 4 else env.v6(peer)
    return {p for proto, p in firewall.reachable_from(env.settings, host, src) if proto == "tcp"}


def peers(env: Environment, role: str) -> list[H.Host]:
    """The hosts `role` looks at from outside: the MX hosts watch each other (mx1 looking
    at mx2 and mx2 at mx1), as another mail server would."""
    mxes = [h for h in env.hosts.values() if h.runs(H.MX) or h.runs(H.BACKUP_MX)]
    return [h for h in mxes if h.role != role] if any(h.role == role for h in mxes) else []


def scan_ports() -> list[int]:
    ports = {firewall.SSH_PORT, firewall.ACME_HTTP[1]}
    ports |= {p for rules in firewall.PUBLIC.values() for _, p, _ in rules}
    ports |= {p for _, _, p, _, _ in firewall.PRIVATE}
    return sorted(ports | set(EXTRA_SCAN_PORTS))


def tls_endpoints(settings: Settings, host: H.Host) -> list[tuple[int, str]]:
    """(port, name a client asks for) for every TLS port this host serves."""
    public = {p for _, p in firewall.public_ports(host)}
    sni = {
        25: host.fqdn,
        465: settings.fqdn("smtp"),
        587: settings.fqdn("smtp"),
        993: settings.fqdn("imap"),
        4190: settings.fqdn("imap"),
        443: f"mta-sts.{settings.primary_domain}",
    }
    return [(p, sni[p]) for p in TLS_PORTS if p in public]


def cert_names(settings: Settings, host: H.Host) -> list[str]:
    return tls.certificate_names(settings, host)


DAILY_TIMER = "mailstack-status.timer"


def runs_daily_job(host: H.Host) -> bool:
    """The one host with the daily status job (mailstack/status/timer.py): the primary,
    which sees every replica, sends mail and holds the DKIM keys."""
    return host.runs(H.DB_PRIMARY)


def units(host: H.Host) -> list[str]:
    """systemd units that must be active on `host`: every supervised daemon it runs
    (supervision.units, one list), plus SSH, the host firewall and the daily timer."""
    u = ["ssh.service", "nftables.service", *supervision.units(host)]
    if runs_daily_job(host):
        u.append(DAILY_TIMER)
    return u


def disk_paths(host: H.Host) -> dict[str, str]:
    out = {"system": "/"}
    if host.runs(H.IMAP):
        out["mail"] = dovecot.Layout().vmail
    if host.runs(H.DB_PRIMARY) or host.runs(H.DB_REPLICA):
        out["postgresql"] = postgresql.PG_DATA
    return out


def dnsbl_queries(env: Environment, role: str) -> list[tuple[str, str, str]]:
    """(address, list, query name) for the host's addresses on every list."""
    out = []
    v4, v6 = env.v4(role), env.v6(role)
    for bl in DNSBLS_V4:
        out.append((v4, bl, ".".join(reversed(v4.split("."))) + "." + bl))
    nibbles = ipaddress.ip_address(v6).exploded.replace(":", "")
    for bl in DNSBLS_V6:
        out.append((v6, bl, ".".join(reversed(nibbles)) + "." + bl))
    return out


def dkim_keys(settings: Settings) -> dict[str, str]:
    return {d: rspamd.key_path(d, dkim.plan(settings).signing.selector) for d in settings.domains}


def replica_slots(settings: Settings) -> dict[str, str]:
    """replica role -> (private ip, slot name)"""
    return {h.role: postgresql.slot_name(h) for h in H.hosts(settings).values() if h.runs(H.DB_REPLICA)}
