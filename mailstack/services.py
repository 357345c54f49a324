"""The `services-<role>` step: every daemon a host runs, configured in one bundle.

Order matters: the resolver first (smtpd's rDNS checks and rspamd need it), rspamd
before smtpd (smtpd's filter-rspamd talks to it), Dovecot before smtpd on a single
host (LMTP), nginx last.
"""
from __future__ import annotations

from . import hosts as H
from . import bans, imap, mx, resolver, spam, supervision, web
from .bundle import Bundle
from .context import Context
from .status import timer as status_timer


def bundle(ctx: Context, host: H.Host) -> Bundle:
    # Supervision first: a daemon that a later part restarts is already supervised.
    b = supervision.bundle(host) + resolver.bundle(ctx, host)
    if spam.runs_rspamd(host):
        b = b + spam.bundle(ctx, host)
    if host.runs(H.IMAP):
        b = b + imap.bundle(ctx, host)
    if mx.runs_smtpd(host):
        b = b + mx.bundle(ctx, host)
    if bans.runs_fail2ban(host):
        # After the daemons whose logins it watches.
        b = b + bans.bundle(ctx, host)
    if host.runs(H.WEB):
        b = b + web.bundle(ctx, host)
    return b + status_timer.bundle(ctx, host)
