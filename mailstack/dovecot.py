"""Dovecot 2.3 on the IMAP host: IMAPS, LMTP from mx1, Sieve/ManageSieve, quota, users
from the local PostgreSQL (the replica on imap, the primary in `single`).

One complete dovecot.conf instead of Debian's conf.d: every setting that matters is in
one rendered file, and no packaged default can change behind it on an upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import hosts as H
from . import postgresql as D
from . import rspamd, smtpd, templates, tls
from .bundle import Bundle, File

UNIT = "dovecot.service"
ETC = "/etc/dovecot"
CONF = f"{ETC}/dovecot.conf"
SQL_CONF = f"{ETC}/dovecot-sql.conf.ext"
DICT_QUOTA_CONF = f"{ETC}/dovecot-dict-quota.conf.ext"
LIBEXEC = "/usr/local/libexec/mailstack"
QUOTA_WARNING = f"{LIBEXEC}/quota-warning"
LDA = "/usr/lib/dovecot/dovecot-lda"
VMAIL_USER = "vmail"
# Global scripts run before the user's own, in this order (sieve_before, sieve_before2).
SIEVE_BEFORE = ("dedupe.sieve", "spam-to-junk.sieve")
SIEVE_DIR = f"{ETC}/sieve"
# Spam learning (docs/mail-flow.md): IMAPSieve runs these when a message is copied or
# moved into Junk (spam) and out of it (ham); they pipe it to LEARN_PROGRAM, which hands
# it to Rspamd's controller on mx1 with rspamc. Only global scripts may pipe.
LEARN_SPAM, LEARN_HAM = "learn-spam.sieve", "learn-ham.sieve"
LEARN_PROGRAM = "rspamd-learn"
SIEVE_PIPE_DIR = f"{LIBEXEC}/sieve-pipe"
# The controller password, for rspamc as the vmail user the IMAP processes run as (and
# nothing else: not dovenull's pre-login processes).
LEARN_PASSWORD = f"{ETC}/rspamd-learn.password"
# Seconds a move into or out of Junk may wait for Rspamd; the move itself goes on anyway.
LEARN_TIMEOUT = 5
# How long a Message-ID a user got is remembered: a redelivery comes within minutes
# (smtpd's retry), or after an outage of imap (mx1 and mx2 queue for up to days, but
# then the first copy was never stored).
DUPLICATE_PERIOD = "1d"


@dataclass(frozen=True)
class Layout:
    """Where things live. The defaults are the servers'; tests point them at a temp dir
    and unprivileged ports, and render the very same templates."""

    etc: str = ETC
    vmail: str = "/var/vmail"
    tls_dir: str = "/etc/mailstack/tls"
    base_dir: str | None = None  # Dovecot's default /run/dovecot
    state_dir: str | None = None  # Dovecot's default /var/lib/dovecot
    log_path: str | None = None  # syslog
    imaps_port: int = 993
    lmtp_port: int = 24
    sieve_port: int = 4190
    db_port: int = 5432
    libexec: str = LIBEXEC


def lmtp_address(host: H.Host) -> str:
    """Where mx1's smtpd delivers: the private IP in ha, loopback when mx1 is imap."""
    return "127.0.0.1" if host.runs(H.MX) else host.private_ip


def dovecot_conf(ctx, host: H.Host, layout: Layout = Layout()) -> str:
    s = ctx.settings
    return templates.render(
        "dovecot/dovecot.conf.j2",
        L=layout,
        tls=tls,
        hostname=host.fqdn,
        postmaster=f"postmaster@{s.primary_domain}",
        lmtp_address=lmtp_address(host),
        vmail_uid=H.VMAIL_UID,
        subaddress_delimiter=H.SUBADDRESS_DELIMITER,
        submission_host=submission_host(ctx, host),
        vmail_user=VMAIL_USER,
        quota_warning=f"{layout.libexec}/quota-warning",
        # Dovecot runs only the first matching warning, so the highest comes first.
        warn_at=sorted(s.quota.warn_at, reverse=True),
        default_quota_mb=s.quota.default_mb,
        sieve_before=[f"{layout.etc}/sieve/{name}" for name in SIEVE_BEFORE],
        sieve_pipe_dir=f"{layout.libexec}/sieve-pipe",
        learn_spam=f"{layout.etc}/sieve/{LEARN_SPAM}",
        learn_ham=f"{layout.etc}/sieve/{LEARN_HAM}",
        duplicate_period=DUPLICATE_PERIOD,
    )


def submission_host(ctx, host: H.Host) -> str:
    """Where Sieve redirects and vacation replies go: mx1's private relay port, which
    accepts mail from imap for any destination (there is no sendmail on imap). Empty
    when one host runs everything: Dovecot then uses the local sendmail of OpenSMTPD."""

    mx_host = ctx.host_for(H.MX)
    if mx_host.role == host.role:
        return ""
    return f"{mx_host.private_ip}:{smtpd.RELAY_PORT}"


# Dovecot 2.3's pgsql driver escapes %u with PQescapeStringConn, which needs a live
# connection: while the database is away it logs "Could not escape string: Not connected
# to database" and puts '' in place of the address. If the connection is back by the time
# that query runs, '' matches nobody and an existing user was "unknown": LMTP answered
# `550 5.1.1 User doesn't exist` (issue 14), a login failed instead of failing
# temporarily. With this clause such a query is an error, which Dovecot answers as a
# temporary failure (LMTP 451, IMAP "[UNAVAILABLE]"). The WHEN is a constant, so
# PostgreSQL folds the CASE away for every real address and never evaluates the cast.
EMPTY_ADDRESS_GUARD = (
    " AND CASE WHEN '%u' = '' THEN "
    "('lookup without an address: the database connection was lost' || '')::int = 0 "
    "ELSE true END"
)


def guarded(query: str) -> str:
    """A lookup by %u that fails, rather than finding nobody, when %u came out empty."""
    return query + EMPTY_ADDRESS_GUARD


def sql_conf(ctx, layout: Layout = Layout()) -> str:
    pw = D.check_secret("lookup_password", ctx.secrets.lookup_password)
    return templates.render(
        "dovecot/dovecot-sql.conf.ext.j2",
        connect=f"host=127.0.0.1 port={layout.db_port} dbname={D.DB_NAME} user={D.LOOKUP_USER} password={pw}",
        password_query=guarded(D.DOVECOT_PASSWORD_QUERY),
        user_query=guarded(D.dovecot_user_query(layout.vmail, H.VMAIL_UID)),
        iterate_query=D.DOVECOT_ITERATE_QUERY,
    )


def dict_quota_conf(ctx, layout: Layout = Layout()) -> str:
    """Where the quota clone writes each mailbox's usage: the primary's quota table."""
    return templates.render(
        "dovecot/dovecot-dict-quota.conf.ext.j2", connect=D.quota_conninfo(ctx, layout.db_port), table=D.QUOTA_TABLE
    )


def quota_warning_script(ctx, layout: Layout = Layout()) -> str:
    return templates.render(
        "dovecot/quota-warning.sh.j2",
        lda=LDA,
        conf=f"{layout.etc}/dovecot.conf",
        sender=f"postmaster@{ctx.settings.primary_domain}",
    )


def sieve_before(name: str) -> str:
    return templates.read(f"dovecot/{name}")


def global_sieves() -> tuple[str, ...]:
    """Every global script, precompiled by the deploy step (vmail can't write there)."""
    return (*SIEVE_BEFORE, LEARN_SPAM, LEARN_HAM)


def learn_program(ctx, host: H.Host, layout: Layout = Layout()) -> str:
    return templates.render(
        "dovecot/rspamd-learn.sh.j2",
        controller=rspamd.controller_address(ctx, host),
        password_file=f"{layout.etc}/rspamd-learn.password",
        timeout=LEARN_TIMEOUT,
    )


def learn_files(ctx, host: H.Host, layout: Layout = Layout()) -> tuple[File, ...]:
    return (
        File(f"{layout.libexec}/sieve-pipe/{LEARN_PROGRAM}", learn_program(ctx, host, layout), 0o755),
        File(
            f"{layout.etc}/rspamd-learn.password",
            ctx.secrets.rspamd_controller_password,
            0o640,
            "root",
            VMAIL_USER,
            secret=True,
        ),
    )


def files(ctx, host: H.Host, layout: Layout = Layout()) -> tuple[File, ...]:
    return (
        File(f"{layout.etc}/dovecot.conf", dovecot_conf(ctx, host, layout), 0o644),
        File(f"{layout.etc}/dovecot-sql.conf.ext", sql_conf(ctx, layout), 0o640, "root", "dovecot", secret=True),
        File(
            f"{layout.etc}/dovecot-dict-quota.conf.ext",
            dict_quota_conf(ctx, layout),
            0o640,
            "root",
            "dovecot",
            secret=True,
        ),
        File(f"{layout.libexec}/quota-warning", quota_warning_script(ctx, layout), 0o755),
        *(File(f"{layout.etc}/sieve/{name}", sieve_before(name), 0o644) for name in global_sieves()),
        *learn_files(ctx, host, layout),
    )


def bundle(ctx, host: H.Host) -> Bundle:
    script = templates.render(
        "dovecot/install.sh.j2",
        conf=CONF,
        sql_conf=SQL_CONF,
        dict_conf=DICT_QUOTA_CONF,
        quota_warning=QUOTA_WARNING,
        sieves=[f"{SIEVE_DIR}/{n}" for n in global_sieves()],
        vmail=Layout().vmail,
        vmail_uid=H.VMAIL_UID,
        learn_program=f"{SIEVE_PIPE_DIR}/{LEARN_PROGRAM}",
        learn_password=LEARN_PASSWORD,
        # rspamc comes with the rspamd package; where no Rspamd runs,
        # only the client is wanted.
        install_rspamc=not rspamd.runs_rspamd(host),
    )
    return Bundle(files(ctx, host), script)
