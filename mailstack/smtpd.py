"""OpenSMTPD: the primary MX and submission on mx1, the backup MX on mx2.

Every mail lookup (domains, recipients, aliases, credentials, allowed senders) is a
query against the PostgreSQL server on the same host, so the rendered smtpd.conf
depends on the topology and host names only, never on domains, users or aliases.
"""

from __future__ import annotations

from . import hosts as H
from . import postgresql, tls
from .bundle import Bundle, File
from .context import Context
from .templates import read, render

SMTPD_CONF = "/etc/smtpd.conf"
TABLE_CONF = "/etc/smtpd/pgsql.conf"
DYNDNS_REGEX = "/etc/smtpd/dyndns.regex"
# filter-quota's connection and query (the lookup role's password: root:opensmtpd 0640).
QUOTA_CONF = "/etc/smtpd/quota.conf"
# The SRS key (Sender Rewriting Scheme), included by smtpd.conf: root:root 0600, since
# smtpd reads its configuration as root before it drops privileges, and nothing else
# needs it. smtpd.conf itself stays world-readable and free of secrets.
SRS_CONF = "/etc/smtpd/srs.conf"
SRS_TTL = "7d"
TLS_DIR = "/etc/mailstack/tls"
# mx1's port for our own hosts (mx2's backup queue, imap's Sieve redirects): a separate
# listener, because the connect filters on port 25 would refuse their private addresses.
RELAY_PORT = 10025
FLUSH_SERVICE = "/etc/systemd/system/mailstack-smtpd-flush.service"
FLUSH_TIMER = "/etc/systemd/system/mailstack-smtpd-flush.timer"


def runs_smtpd(host: H.Host) -> bool:
    return host.runs(H.MX) or host.runs(H.BACKUP_MX)


def _role(host: H.Host) -> str:
    return "mx1" if host.runs(H.MX) else "mx2"


def _internal_sources(ctx: Context, host: H.Host) -> list[str]:
    """Private addresses of the other hosts that hand mail to this MX."""
    if not host.runs(H.MX):
        return []
    return [h.private_ip for h in ctx.hosts.values() if h.role != host.role and (h.runs(H.BACKUP_MX) or h.runs(H.IMAP))]


def lmtp_target(ctx: Context, host: H.Host) -> str:
    imap = ctx.host_for(H.IMAP)
    return f"{'127.0.0.1' if imap.role == host.role else imap.private_ip}:24"


def _tls_options(ciphers: str) -> str:
    return f'protocols "{tls.libtls_protocols()}" ciphers "{ciphers}"'


def smtpd_conf(ctx: Context, host: H.Host) -> str:
    s = ctx.settings
    role = _role(host)
    submission = host.runs(H.SUBMISSION)
    smtp_fqdn = s.fqdn("smtp")
    pki_names = [host.fqdn] + ([smtp_fqdn] if submission and smtp_fqdn != host.fqdn else [])
    internal = _internal_sources(ctx, host)
    imap = ctx.host_for(H.IMAP)
    return render(
        "smtpd/smtpd.conf.j2",
        host=host,
        role=role,
        submission=submission,
        smtp_fqdn=smtp_fqdn,
        pki_names=pki_names,
        tls_dir=TLS_DIR,
        table_conf=TABLE_CONF,
        srs_conf=SRS_CONF,
        srs_ttl=SRS_TTL,
        dyndns_regex=DYNDNS_REGEX,
        internal=internal,
        imap_internal=imap.private_ip if imap.private_ip in internal else "",
        relay_port=RELAY_PORT,
        tls_intermediate=_tls_options(tls.openssl_ciphers()),
        tls_inbound=_tls_options(tls.INBOUND_MX_CIPHERS),
        subaddress_delimiter=H.SUBADDRESS_DELIMITER,
        filter_guard=FILTER_GUARD,
        filter_dir=FILTER_DIR,
        filter_quota=FILTER_QUOTA,
        quota_conf=QUOTA_CONF,
        authserv_domain=s.host_domain,
        lmtp=lmtp_target(ctx, host) if role == "mx1" else "",
        primary_relay=(f"{ctx.host_for(H.MX).private_ip}:{RELAY_PORT}" if role == "mx2" else ""),
    )


def _conninfo_value(v: str) -> str:
    # libpq conninfo: single quotes, with backslash escapes for ' and \.
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conninfo(ctx: Context) -> str:
    return " ".join(
        [
            "host=127.0.0.1",
            "port=5432",
            f"dbname={postgresql.DB_NAME}",
            f"user={postgresql.LOOKUP_USER}",
            f"password={_conninfo_value(ctx.secrets.lookup_password)}",
        ]
    )


def srs_conf(ctx: Context) -> str:
    """`srs key` for smtpd (docs/mail-flow.md, "Forwarding"). The key's alphabet is the
    database passwords' (letters, digits, ._~+=-), so it needs no escaping in quotes."""
    key = postgresql.check_secret("srs_key", ctx.secrets.srs_key)
    return render("smtpd/srs.conf.j2", key=key)


def quota_conf(ctx: Context) -> str:
    """filter-quota's database connection (the local server, lookup role) and its query."""
    return render(
        "smtpd/quota.conf.j2",
        conninfo=_conninfo(ctx) + " connect_timeout=2",
        query=" ".join(postgresql.QUOTA_FULL_QUERY.split()),
    )


def table_conf(ctx: Context, host: H.Host) -> str:
    conninfo = _conninfo(ctx)
    # Only the lookups this host's smtpd.conf uses.
    keys = ["query_domain", "query_mailaddr"] + (["query_alias"] if host.runs(H.MX) else [])
    if host.runs(H.SUBMISSION):
        keys += ["query_credentials", "query_mailaddrmap"]
    queries = []
    for key in keys:
        query = " ".join(postgresql.SMTPD_QUERIES[key].split())
        queries.append((key, query))
    return render("smtpd/pgsql.conf.j2", conninfo=conninfo, queries=queries)


UNIT = "opensmtpd.service"
UNIT_DROPIN = f"/etc/systemd/system/{UNIT}.d/mailstack.conf"
# Every filter process runs behind this guard (cloud-init/smtpd/filter-guard.py): a
# filter that exits takes smtpd down with it.
FILTER_GUARD = "/usr/local/libexec/mailstack/filter-guard"
FILTER_DIR = "/usr/libexec/opensmtpd"
# The RCPT-time quota check (cloud-init/smtpd/filter-quota.py, docs/mail-flow.md "Quota").
FILTER_QUOTA = "/usr/local/libexec/mailstack/filter-quota"


def flush_units(host: H.Host) -> tuple[File, File]:
    return (
        File(FLUSH_SERVICE, read("smtpd/mailstack-smtpd-flush.service")),
        File(FLUSH_TIMER, read("smtpd/mailstack-smtpd-flush.timer")),
    )


def bundle(ctx: Context, host: H.Host) -> Bundle:
    if not runs_smtpd(host):
        return Bundle()
    files = [
        File(SMTPD_CONF, smtpd_conf(ctx, host)),
        File(TABLE_CONF, table_conf(ctx, host), mode=0o640, group="opensmtpd", secret=True),
        File(SRS_CONF, srs_conf(ctx), mode=0o600, secret=True),
        File(DYNDNS_REGEX, read("smtpd/dyndns.regex")),
        File(
            UNIT_DROPIN,
            render("smtpd/opensmtpd.service.d.conf.j2", pg_unit=postgresql.PG_UNIT, after_dovecot=host.runs(H.IMAP)),
        ),
        File(FILTER_GUARD, read("smtpd/filter-guard.py"), mode=0o755),
        File(QUOTA_CONF, quota_conf(ctx), mode=0o640, group="opensmtpd", secret=True),
        File(FILTER_QUOTA, read("smtpd/filter-quota.py"), mode=0o755),
    ]
    backup = not host.runs(H.MX)
    if backup:
        files += flush_units(host)
    script = render(
        "smtpd/deploy.sh.j2",
        backup=backup,
        unit_dropin=UNIT_DROPIN,
        filter_guard=FILTER_GUARD,
        filter_quota=FILTER_QUOTA,
        smtpd_conf=SMTPD_CONF,
        flush_timer=FLUSH_TIMER,
    )
    return Bundle(tuple(files), script)
