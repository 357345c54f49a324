"""Supervision: every daemon a host runs comes back by itself, whatever stopped it.

One systemd drop-in per unit, installed by the services step (not user-data, so a
change never replaces a server). The units are derived from what the host runs; the
status check reads their restart counts. Decisions: docs/mail-flow.md.
"""

from __future__ import annotations

from . import dovecot, fail2ban, postgresql, rspamd, smtpd
from . import hosts as H
from .bundle import Bundle, File
from .templates import render

DROPIN = "mailstack-supervision.conf"
RESTART_SEC = 3
# At most BURST starts in INTERVAL seconds: a daemon that can't start at all ends up
# failed (and visible) after about 90 s of tries instead of looping for ever, while an
# outage of what it needs (smtpd's table-postgres exits while PostgreSQL is down) or a
# crash now and then is bridged.
START_LIMIT_INTERVAL = 300
START_LIMIT_BURST = 30
# After its main process dies, systemd by default sends SIGTERM to the whole unit at once.
# For Dovecot that killed the log process too, and every LMTP delivery in flight exited
# at its next log line, "stored mail into mailbox", which comes after the save but before
# the Sieve duplicate record and the 250: mx1 delivered the message again and the dedupe
# had nothing to catch it (the lab's `faults` scenario, kill -9 of Dovecot under load).
# With KillMode=process only the (dead) master is signalled: its children finish what
# they are doing and exit by themselves, as they do whenever the master is gone (they
# close their listeners at once, so the new master can bind). A clean stop still goes
# through the master, which stops its own children.
KILL_MODE = {dovecot.UNIT: "process"}


def units(host: H.Host) -> list[str]:
    """The long-running daemons of a host, as systemd units."""
    out = ["unbound.service", "nginx.service", postgresql.PG_UNIT]
    if rspamd.runs_rspamd(host):
        out += ["rspamd.service", "redis-server.service"]
    if smtpd.runs_smtpd(host):
        out.append(smtpd.UNIT)
    if host.runs(H.IMAP):
        out.append(dovecot.UNIT)
    if fail2ban.runs_fail2ban(host):
        out.append(fail2ban.UNIT)
    return out


def dropin_path(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.d/{DROPIN}"


def bundle(host: H.Host) -> Bundle:
    files = tuple(
        File(
            dropin_path(u),
            render(
                "supervision/restart.conf.j2",
                unit=u,
                restart_sec=RESTART_SEC,
                interval=START_LIMIT_INTERVAL,
                burst=START_LIMIT_BURST,
                kill_mode=KILL_MODE.get(u),
            ),
        )
        for u in units(host)
    )
    return Bundle(files, render("supervision/deploy.sh.j2", paths=[f.path for f in files]))
