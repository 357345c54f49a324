"""fail2ban: an address that keeps failing to log in (SMTP AUTH on 465/587, IMAP on 993,
ManageSieve on 4190) is blocked for a while, IPv4 and IPv6 alike.

Debian 12's fail2ban reads the daemons' failures from the journal (there is no syslog
file without rsyslog) and bans through its own nftables table (`inet f2b-table`, hook
input, priority -1, before the host firewall's `inet filter`), so neither ruleset edits
the other. Our own hosts and `admin.sshCidrs` are never banned; a good login from any
other address is never affected. Decisions: docs/hardening.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import firewall, smtpd
from . import hosts as H
from .bundle import Bundle, File
from .context import Context
from .templates import render

UNIT = "fail2ban.service"
JAIL_LOCAL = "/etc/fail2ban/jail.d/mailstack.local"
SMTPD_FILTER = "/etc/fail2ban/filter.d/mailstack-smtpd.conf"
# fail2ban's nftables action's own table (its default name; docs/hardening.md).
NFT_TABLE = "f2b-table"
PACKAGES = ("fail2ban", "python3-systemd")


@dataclass(frozen=True)
class Jail:
    name: str
    filter: str  # a file in /etc/fail2ban/filter.d (without .conf)
    ports: tuple[int, ...]


def _ports(service: str) -> tuple[int, ...]:
    return tuple(port for _, port, _ in firewall.PUBLIC[service])


def jails(host: H.Host) -> list[Jail]:
    out = []
    if host.runs(H.SUBMISSION):
        out.append(Jail("mailstack-smtpd", "mailstack-smtpd", _ports(H.SUBMISSION)))
    if host.runs(H.IMAP):
        # Debian's own dovecot filter matches 2.3's "auth failed" lines (tests/test_fail2ban.py)
        # and reads the journal of dovecot.service.
        out.append(Jail("mailstack-dovecot", "dovecot", _ports(H.IMAP)))
    return out


def runs_fail2ban(host: H.Host) -> bool:
    return bool(jails(host))


def ignore_ips(ctx: Context) -> list[str]:
    """Never banned: loopback, the private network, every host's public addresses and
    the admin networks."""
    s = ctx.settings
    ips = ["127.0.0.0/8", "::1", s.hetzner.private_cidr]
    for role in ctx.hosts:
        a = ctx.addresses.get(role)
        if a:
            ips += [a.ipv4, a.ipv6]
    ips += list(s.admin.ssh_cidrs)
    return list(dict.fromkeys(ips))


def jail_local(ctx: Context, host: H.Host) -> str:
    lim = ctx.settings.limits
    return render(
        "fail2ban/jail.local.j2",
        jails=jails(host),
        ignoreip=ignore_ips(ctx),
        maxretry=lim.login_failures,
        findtime=lim.login_window,
        bantime=lim.ban_seconds,
        table=NFT_TABLE,
    )


def smtpd_filter() -> str:
    return render("fail2ban/mailstack-smtpd.conf.j2", unit=smtpd.UNIT)


def bundle(ctx: Context, host: H.Host) -> Bundle:
    if not runs_fail2ban(host):
        return Bundle()
    files = [File(JAIL_LOCAL, jail_local(ctx, host))]
    if host.runs(H.SUBMISSION):
        files.append(File(SMTPD_FILTER, smtpd_filter()))
    return Bundle(
        tuple(files),
        render("fail2ban/deploy.sh.j2", packages=PACKAGES, unit=UNIT, jail_local=JAIL_LOCAL, smtpd_filter=SMTPD_FILTER),
    )
