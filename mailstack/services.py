"""The `services-<role>` step: every daemon a host runs, configured in one bundle.

Order matters: the resolver first (smtpd's rDNS checks and rspamd need it), rspamd
before smtpd (smtpd's filter-rspamd talks to it), Dovecot before smtpd on a single
host (LMTP), nginx last.
"""

from __future__ import annotations

from . import dovecot, fail2ban, nginx, rspamd, smtpd, supervision, unbound
from . import hosts as H
from .bundle import Bundle
from .context import Context
from .status import timer as status_timer


def bundle(ctx: Context, host: H.Host) -> Bundle:
    # Supervision first: a daemon that a later part restarts is already supervised.
    b = supervision.bundle(host) + unbound.bundle(ctx, host)
    if rspamd.runs_rspamd(host):
        b = b + rspamd.bundle(ctx, host)
    if host.runs(H.IMAP):
        b = b + dovecot.bundle(ctx, host)
    if smtpd.runs_smtpd(host):
        b = b + smtpd.bundle(ctx, host)
    if fail2ban.runs_fail2ban(host):
        # After the daemons whose logins it watches.
        b = b + fail2ban.bundle(ctx, host)
    if host.runs(H.WEB):
        b = b + nginx.bundle(ctx, host)
    return b + status_timer.bundle(ctx, host)
