"""Redis on the MX hosts: Rspamd's store (Bayes, history, ratelimit, fuzzy hashes).

mx1's Redis holds the one Bayes classifier every Rspamd that scans mail uses, so what
users teach it by moving mail into and out of Junk counts on both MXes: mx2's Rspamd
reaches it over the private network (nftables lets mx2 alone in, `firewall.PRIVATE`).
Every Redis wants the stack's Redis password, also from loopback: on mx1 the port is on
the private network, and a password that only some clients need is one nobody checks.

Debian's /etc/redis/redis.conf stays untouched (a changed conffile would hold back its
upgrades); our file includes it and sets what differs, and a systemd drop-in starts
redis-server with ours. Decisions: docs/mail-flow.md, "Spam learning".
"""

from __future__ import annotations

from . import hosts as H
from .bundle import Bundle, File
from .context import Context
from .templates import render

UNIT = "redis-server.service"
PORT = 6379
PACKAGED_CONF = "/etc/redis/redis.conf"
CONF = "/etc/redis/mailstack.conf"
DROPIN = f"/etc/systemd/system/{UNIT}.d/mailstack.conf"
# For root on the host (deploy steps, backups, an operator): redis-cli takes the password
# from REDISCLI_AUTH, never from its command line.
AUTH_ENV = f"REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' {CONF})\""
CLI = f"{AUTH_ENV} redis-cli"


def runs_redis(host: H.Host) -> bool:
    """Next to every Rspamd (spam.runs_rspamd): the MX hosts."""
    return host.runs(H.MX) or host.runs(H.BACKUP_MX)


def bayes_host(ctx: Context) -> H.Host:
    """Where the Bayes data lives: mx1."""
    return ctx.host_for(H.MX)


def bayes_server(ctx: Context, host: H.Host) -> str:
    """How `host`'s Rspamd reaches the Bayes Redis: loopback on mx1, else mx1's private IP."""
    mx1 = bayes_host(ctx)
    return f"{'127.0.0.1' if mx1.role == host.role else mx1.private_ip}:{PORT}"


def remote_clients(ctx: Context, host: H.Host) -> list[H.Host]:
    """The other hosts whose Rspamd uses this host's Redis (mx2's, on mx1 in ha)."""
    if bayes_host(ctx).role != host.role:
        return []
    return [h for h in ctx.hosts.values() if h.role != host.role and runs_redis(h)]


def bind_addresses(ctx: Context, host: H.Host) -> list[str]:
    # "-::1": IPv6 loopback if the host has it (Debian's default). The private address has
    # no "-": a Redis that silently skipped it would leave mx2 without Bayes; one that
    # fails to start is restarted (supervision.py) once the private network is up.
    out = ["127.0.0.1", "-::1"]
    if remote_clients(ctx, host):
        out.append(host.private_ip)
    return out


def conf(ctx: Context, host: H.Host, include: str = PACKAGED_CONF) -> str:
    return render(
        "redis/mailstack.conf.j2",
        include=include,
        bind=bind_addresses(ctx, host),
        password=check_password(ctx.secrets.redis_password),
    )


def check_password(value: str) -> str:
    # It goes into redis.conf and Rspamd's UCL as is: no quoting rules to get wrong.
    if len(value) < 16 or not all(c.isalnum() or c in "-_" for c in value):
        raise ValueError(
            "redis_password: must be at least 16 characters of [A-Za-z0-9_-] (generate it with special characters off)"
        )
    return value


def bundle(ctx: Context, host: H.Host) -> Bundle:
    if not runs_redis(host):
        return Bundle()
    files = (
        File(CONF, conf(ctx, host), 0o640, "root", "redis", secret=True),
        File(DROPIN, render("redis/redis-server.service.d.conf.j2", conf=CONF, unit=UNIT)),
    )
    return Bundle(files, render("redis/deploy.sh.j2", conf=CONF, dropin=DROPIN, cli=CLI))
