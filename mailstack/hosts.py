"""Which servers exist, what each one runs, and their addresses.

`ha` is three servers (mx1, imap, mx2); `single` puts every service on mx1. The rest of
the code asks a Host what it runs instead of testing role names, so both topologies
share one code path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .settings import Settings

# Services a host can run.
MX = "mx"  # inbound port 25 for the stack's domains, rspamd
SUBMISSION = "submission"  # 465/587 with AUTH, DKIM signing, outbound relay
BACKUP_MX = "backup-mx"  # port 25, relays to mx1, holds mail while mx1 is down
DB_PRIMARY = "db-primary"
DB_REPLICA = "db-replica"
IMAP = "imap"  # Dovecot IMAP, LMTP, Sieve
WEB = "web"  # nginx for MTA-STS policy and autoconfig over HTTPS

ROLES = ("mx1", "imap", "mx2")
VMAIL_UID = 5000  # fixed so the mail volume keeps working when imap is rebuilt
# alice+lists@ is alice@: smtpd (sub-addr-delim), the recipient query every MX asks
# (database.SMTPD_QUERIES) and Dovecot (recipient_delimiter) all use this one.
SUBADDRESS_DELIMITER = "+"


@dataclass(frozen=True)
class Host:
    role: str  # mx1 | imap | mx2: the Pulumi name and the config key
    fqdn: str
    private_ip: str
    services: frozenset[str]

    @property
    def name(self) -> str:
        return self.fqdn.split(".", 1)[0]

    def runs(self, service: str) -> bool:
        return service in self.services


@dataclass(frozen=True)
class Address:
    """A host's public addresses. ipv6 is the exact address mail leaves from."""

    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class Network:
    cidr: str
    subnet: str


def network(settings: Settings) -> Network:
    net = ipaddress.ip_network(settings.hetzner.private_cidr)
    # The second /24 (10.77.1.0/24 by default) leaves .0 free for future use.
    subnets = list(net.subnets(new_prefix=24)) if net.prefixlen < 24 else [net]
    subnet = subnets[1] if len(subnets) > 1 else subnets[0]
    return Network(str(net), str(subnet))


def hosts(settings: Settings) -> dict[str, Host]:
    subnet = ipaddress.ip_network(network(settings).subnet)

    def ip(n: int) -> str:
        return str(subnet.network_address + n)

    if settings.topology == "single":
        everything = frozenset({MX, SUBMISSION, DB_PRIMARY, IMAP, WEB})
        return {"mx1": Host("mx1", settings.fqdn("mx1"), ip(11), everything)}
    return {
        "mx1": Host("mx1", settings.fqdn("mx1"), ip(11), frozenset({MX, SUBMISSION, DB_PRIMARY, WEB})),
        "imap": Host("imap", settings.fqdn("imap"), ip(12), frozenset({IMAP, DB_REPLICA})),
        "mx2": Host("mx2", settings.fqdn("mx2"), ip(13), frozenset({BACKUP_MX, DB_REPLICA})),
    }


def find(hosts_: dict[str, Host], service: str) -> Host:
    """The one host running `service` (mx1 for everything in `single`)."""
    for h in hosts_.values():
        if h.runs(service):
            return h
    raise KeyError(service)


def ipv6_host_address(primary_ip: str) -> str:
    """Hetzner hands out a /64 per primary IPv6 and configures ::1 of it on the server.
    The PTR must name that exact address, the one smtpd sends from."""
    text = primary_ip.strip()
    if "/" in text:
        net = ipaddress.ip_network(text, strict=False)
        return str(net.network_address + 1)
    addr = ipaddress.ip_address(text)
    if int(addr) & 0xFFFFFFFFFFFFFFFF == 0:
        return str(addr + 1)
    return str(addr)
