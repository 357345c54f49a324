"""Which ports each service needs, rendered twice: as Hetzner Cloud firewall rules and as
the host's own nftables ruleset.

Hetzner's firewall does not see private-network traffic, so the unauthenticated private
services (LMTP, PostgreSQL) are guarded by nftables alone, matched on the peers' private
source addresses. The nftables file is rendered twice: into cloud-init user-data for the
first boot, where it depends only on the host's services and the private network (admin
networks there would replace the server on every change) and leaves SSH to the Hetzner
firewall; and by the `host-<role>` deploy step, which adds the `admin.sshCidrs` limit and
applies it in place.

`hcloud_nftables` renders the Hetzner rules a third time, as nftables for a filter in
front of a server (the lab's edge, where no Hetzner firewall exists), with Hetzner's
semantics: stateful, inbound-only, everything no rule allows dropped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import hosts as H
from . import redis, rspamd
from .bundle import Bundle, File
from .settings import Settings
from .templates import render

ANYWHERE = ("0.0.0.0/0", "::/0")
SSH_PORT = 22
ACME_HTTP = ("tcp", 80, "HTTP for ACME HTTP-01 challenges")

# The one table: service -> public ports (protocol, port, why).
PUBLIC: dict[str, tuple[tuple[str, int, str], ...]] = {
    H.MX: (("tcp", 25, "SMTP inbound"),),
    H.BACKUP_MX: (("tcp", 25, "SMTP inbound (backup MX)"),),
    H.SUBMISSION: (("tcp", 465, "SMTP submission, implicit TLS"), ("tcp", 587, "SMTP submission, STARTTLS")),
    H.IMAP: (("tcp", 993, "IMAP, implicit TLS"), ("tcp", 4190, "ManageSieve")),
    H.WEB: (("tcp", 443, "HTTPS: MTA-STS policy, autoconfig"),),
}
# Private flows: (service listening, protocol, port, services allowed to connect, why).
PRIVATE: tuple[tuple[str, str, int, tuple[str, ...], str], ...] = (
    (H.IMAP, "tcp", 24, (H.MX, H.SUBMISSION), "LMTP delivery from the MX (no authentication)"),
    (H.DB_PRIMARY, "tcp", 5432, (H.DB_REPLICA,), "PostgreSQL streaming replication"),
    # mx.RELAY_PORT: unfiltered hand-over from the backup MX (and Sieve mail from imap).
    (H.MX, "tcp", 10025, (H.BACKUP_MX, H.IMAP), "SMTP relay port for mx2 and imap"),
    # Spam learning (docs/mail-flow.md): mx2's Rspamd uses mx1's Bayes data (password),
    # imap's Junk moves teach it through mx1's Rspamd controller (password).
    (H.MX, "tcp", redis.PORT, (H.BACKUP_MX,), "Redis: Bayes data for mx2's Rspamd"),
    (H.MX, "tcp", rspamd.CONTROLLER_PORT, (H.IMAP,), "Rspamd controller: spam/ham learning from imap"),
)


# Flows to daemons that listen on the private network only once the services step has
# configured them (after the host-<role> step put the full ruleset in place): left out of
# the first boot's ruleset in user-data, so adding them replaced no server.
AFTER_DEPLOY_PORTS = frozenset({redis.PORT, rspamd.CONTROLLER_PORT})


@dataclass(frozen=True)
class Rule:
    direction: str
    protocol: str
    port: str | None
    source_ips: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class PrivateFlow:
    protocol: str
    port: int
    sources: tuple[str, ...]  # peers' private IPs
    description: str


def _public(host: H.Host) -> dict[tuple[str, int], str]:
    ports = {ACME_HTTP[:2]: ACME_HTTP[2]}
    for service in sorted(host.services):
        for proto, port, why in PUBLIC.get(service, ()):
            ports.setdefault((proto, port), why)
    return dict(sorted(ports.items(), key=lambda kv: (kv[0][1], kv[0][0])))


def public_ports(host: H.Host) -> list[tuple[str, int]]:
    return list(_public(host))


def private_flows(settings: Settings, host: H.Host, *, first_boot: bool = False) -> list[PrivateFlow]:
    """Connections this host accepts from its peers on the private network (at first
    boot: without AFTER_DEPLOY_PORTS)."""
    peers = [h for h in H.hosts(settings).values() if h.role != host.role]
    flows = []
    for service, proto, port, clients, why in PRIVATE:
        if not host.runs(service) or (first_boot and port in AFTER_DEPLOY_PORTS):
            continue
        sources = sorted(
            {h.private_ip for h in peers if any(h.runs(c) for c in clients)},
            key=lambda ip: tuple(int(x) for x in ip.split(".")),
        )
        if sources:
            flows.append(PrivateFlow(proto, port, tuple(sources), why))
    return flows


def hcloud_rules(settings: Settings, host: H.Host) -> list[Rule]:
    rules = []
    if settings.admin.ssh_cidrs:
        rules.append(Rule("in", "tcp", str(SSH_PORT), tuple(settings.admin.ssh_cidrs), "SSH from the admin networks"))
    # "icmp" covers ICMPv6 too at Hetzner; path MTU discovery and ping need it.
    rules.append(Rule("in", "icmp", None, ANYWHERE, "ICMP and ICMPv6"))
    for (proto, port), why in _public(host).items():
        rules.append(Rule("in", proto, str(port), ANYWHERE, why))
    return rules


def _covers(sources, ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    nets = [ipaddress.ip_network(s, strict=False) for s in sources]
    return any(addr in n for n in nets if n.version == addr.version)


def reachable_from(settings: Settings, host: H.Host, source_ip: str) -> set[tuple[str, int]]:
    """(protocol, port) that a connection from `source_ip` (another server's public
    address) gets through to `host`'s public address, both layers read for that source:
    the deployed nftables ruleset (`nftables(ssh_limit=True)`: the public ports from
    anywhere, SSH only from admin.sshCidrs; its private flows match the peers' private
    addresses, which never come to a public one) and Hetzner's cloud firewall rules."""
    nft = set(_public(host))
    if _covers(settings.admin.ssh_cidrs, source_ip):
        nft.add(("tcp", SSH_PORT))
    cloud = {
        (r.protocol, int(r.port))
        for r in hcloud_rules(settings, host)
        if r.port is not None and _covers(r.source_ips, source_ip)
    }
    return nft & cloud


NFTABLES_CONF = "/etc/nftables.conf"


def nftables(settings: Settings, host: H.Host, *, ssh_limit: bool = False) -> str:
    """/etc/nftables.conf for `host`; with `ssh_limit`, SSH only from admin.sshCidrs."""
    cidrs = [ipaddress.ip_network(c) for c in settings.admin.ssh_cidrs] if ssh_limit else None
    return render(
        "nftables.conf.j2",
        role=host.role,
        ssh_port=SSH_PORT,
        ssh_v4=None if cidrs is None else [str(c) for c in cidrs if c.version == 4],
        ssh_v6=None if cidrs is None else [str(c) for c in cidrs if c.version == 6],
        public=[(proto, port, why) for (proto, port), why in _public(host).items()],
        # Without the SSH limit it is the first boot's ruleset (user-data).
        private=private_flows(settings, host, first_boot=not ssh_limit),
    )


def bundle(settings: Settings, host: H.Host) -> Bundle:
    """The host firewall with the SSH limit, checked by `nft -c` and applied in place
    (established connections, such as this step's own SSH session, survive the swap)."""
    return Bundle(
        (File(NFTABLES_CONF, nftables(settings, host, ssh_limit=True)),),
        render("firewall/deploy.sh.j2", conf=NFTABLES_CONF),
    )


# ------------------------------------------------------------- Hetzner's rules as nftables

EDGE_CHAIN = "inbound"  # the chain the edge's rules live in (a fault may insert into it)
L4 = {"tcp", "udp", "icmp", "esp", "gre"}  # Hetzner's protocols


def edge_table(role: str) -> str:
    return f"hcloud_{role}"


def _rule_lines(rule: Rule) -> list[str]:
    """One nftables line per address family the rule's sources cover (Hetzner mixes IPv4
    and IPv6 in one rule; nftables matches one family per expression)."""
    if rule.direction != "in":
        # Outbound rules would turn Hetzner's "all outbound allowed" into "all denied but
        # these"; the stack has none, and this renderer would have to learn that first.
        raise ValueError(f"hcloud rule {rule.description!r}: only inbound rules are rendered as nftables")
    if rule.protocol not in L4:
        raise ValueError(f"hcloud rule {rule.description!r}: unknown protocol {rule.protocol!r}")
    lines = []
    why = rule.description.replace('"', "'")  # nft's comment is a quoted string
    nets = [ipaddress.ip_network(c, strict=False) for c in rule.source_ips]
    for family, ip, nfproto, icmp in ((4, "ip", "ipv4", "icmp"), (6, "ip6", "ipv6", "ipv6-icmp")):
        mine = [n for n in nets if n.version == family]
        if not mine:
            continue
        # A /0 matches the whole family: say so rather than list it.
        src = (
            f"meta nfproto {nfproto}"
            if any(n.prefixlen == 0 for n in mine)
            else f"{ip} saddr {{ {', '.join(str(n) for n in mine)} }}"
        )
        if rule.protocol == "icmp":  # Hetzner's "icmp" covers ICMPv6 too
            l4 = f"meta l4proto {icmp}"
        elif rule.protocol in ("tcp", "udp") and rule.port not in (None, "", "any"):
            l4 = f"{rule.protocol} dport {rule.port}"  # "80-85" is a range in both
        else:
            l4 = f"meta l4proto {rule.protocol}"
        lines.append(f'{src} {l4} accept comment "{why}"')
    return lines


def hcloud_nftables(settings: Settings, host: H.Host, address: H.Address) -> str:
    """Hetzner's cloud firewall for `host` (`hcloud_rules`) as an nftables file for a
    router or bridge in front of it: one `inet` table matching traffic to the host's public
    addresses. Loading it again replaces the table in one transaction."""
    return render(
        "firewall/edge.nft.j2",
        role=host.role,
        table=edge_table(host.role),
        chain=EDGE_CHAIN,
        ipv4=address.ipv4,
        ipv6=address.ipv6,
        rules=[line for r in hcloud_rules(settings, host) for line in _rule_lines(r)],
    )
