"""PostgreSQL: the primary on mx1 (roles, schema, slots), streaming replicas on imap and
mx2, and the sync of domains/users/aliases from settings.

Every lookup (OpenSMTPD, Dovecot) reads the local server, so mail keeps flowing on imap
and mx2 while mx1 is down. Decisions are explained in docs/database.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import shlex
from collections.abc import Mapping

from . import hosts as H
from . import templates
from .bundle import Bundle, File
from .settings import Settings

DB_NAME = "mailstack"
LOOKUP_USER = "mailstack_lookup"
# Dovecot on the IMAP host writes each mailbox's usage into `quota_usage` on the primary
# (its quota_clone plugin); this role may do that and nothing else.
QUOTA_USER = "mailstack_quota"
QUOTA_TABLE = "quota_usage"
REPLICATION_USER = "mailstack_replicator"
SLOT_PREFIX = "mailstack_"
PG_VERSION = "15"
PG_ETC = f"/etc/postgresql/{PG_VERSION}/main"
PG_DATA = f"/var/lib/postgresql/{PG_VERSION}/main"
PG_UNIT = f"postgresql@{PG_VERSION}-main.service"
PG_CONF = f"{PG_ETC}/conf.d/mailstack.conf"
PG_HBA = f"{PG_ETC}/pg_hba.conf"
PGPASS = "/var/lib/postgresql/.pgpass"
# Never installed: the step pipes them from the stage into psql, so the SCRAM verifiers
# and user hashes they hold are never left on disk.
SETUP_SQL = "/var/lib/mailstack/postgres-setup.sql"
SYNC_SQL = "/var/lib/mailstack/mail-sync.sql"
# Bounds the WAL a slot may pin while its replica is down: the primary's disk matters
# more than a replica that can be rebuilt with pg_basebackup.
MAX_SLOT_WAL_KEEP_SIZE = "2GB"

# The looked-up address as written, and without the sub-address (from the first
# delimiter up to the '@'), both lower-cased.
_D = re.escape(H.SUBADDRESS_DELIMITER)
_RCPT_KEYS = f"lower($1), regexp_replace(lower($1), '^([^@{_D}]*){_D}[^@]*@', '\\1@')"

# table-postgres queries; `$1` is the looked-up key. Only active rows of active domains.
_ACTIVE_USER = "SELECT u.address FROM users u JOIN domains d ON d.name = u.domain WHERE u.active AND d.active"
_ACTIVE_ALIAS = (
    "SELECT a.alias, a.destination FROM aliases a JOIN domains d ON d.name = a.domain WHERE a.active AND d.active"
)
SMTPD_QUERIES: dict[str, str] = {
    # Every mailbox must resolve through the alias table (to the vmail user), or smtpd
    # answers `524 Mailing list expansion problem` for virtual delivery.
    "query_alias": (
        f"SELECT x.destination FROM ({_ACTIVE_ALIAS}) x WHERE x.alias = $1 "
        f"UNION ALL SELECT 'vmail' FROM ({_ACTIVE_USER}) y WHERE y.address = $1"
    ),
    "query_domain": "SELECT name FROM domains WHERE name = $1 AND active",
    "query_credentials": (
        "SELECT u.address, u.password_hash FROM users u JOIN domains d ON d.name = u.domain "
        "WHERE u.address = $1 AND u.active AND d.active"
    ),
    # A login may send as itself and as any alias that delivers to it directly.
    "query_mailaddrmap": (
        f"SELECT y.address FROM ({_ACTIVE_USER}) y WHERE y.address = $1 "
        f"UNION SELECT x.alias FROM ({_ACTIVE_ALIAS}) x WHERE x.destination = $1 "
        f"AND EXISTS (SELECT 1 FROM ({_ACTIVE_USER}) z WHERE z.address = $1)"
    ),
    # The recipient decision at RCPT TO, the same on mx1 and mx2 (`rcpt-to <pgsql>`):
    # an active user or alias, as written or without its sub-address (alice+x@ is
    # alice@, the way smtpd's own alias expansion and Dovecot read it).
    "query_mailaddr": (
        f"SELECT y.address FROM ({_ACTIVE_USER}) y WHERE y.address IN ({_RCPT_KEYS}) "
        f"UNION SELECT x.alias FROM ({_ACTIVE_ALIAS}) x WHERE x.alias IN ({_RCPT_KEYS}) LIMIT 1"
    ),
}

# Dovecot (%u is SQL-escaped by Dovecot and lower-cased by auth_username_format = %Lu).
DOVECOT_PASSWORD_QUERY = (
    'SELECT u.address AS "user", u.password_hash AS password FROM users u '
    "JOIN domains d ON d.name = u.domain WHERE u.address = '%u' AND u.active AND d.active"
)


def dovecot_user_query(vmail_dir: str, uid: int) -> str:
    # home comes from the row, not from %d/%n, so it always matches the sync's view of
    # the address. quota_mb = 0 renders `storage=0`, which Dovecot treats as unlimited.
    return (
        f"SELECT {uid} AS uid, {uid} AS gid, "
        f"'{vmail_dir}/' || u.domain || '/' || u.local_part AS home, "
        "'*:storage=' || u.quota_mb || 'M' AS quota_rule FROM users u "
        "JOIN domains d ON d.name = u.domain WHERE u.address = '%u' AND u.active AND d.active"
    )


# The RCPT-time quota decision (filter-quota on mx1 and mx2, each asking its own
# database): the recipient, as written or without its sub-address, is an active
# mailbox whose usage (cloned by Dovecot) has reached its quota. Aliases are not judged
# here: their other destinations may still take the mail, and LMTP refuses the full one.
QUOTA_FULL_QUERY = (
    f"SELECT u.address FROM users u JOIN {QUOTA_TABLE} q ON q.address = u.address "
    f"WHERE u.address IN ({_RCPT_KEYS}) AND u.active AND u.quota_mb > 0 "
    "AND q.bytes >= u.quota_mb::bigint * 1048576 LIMIT 1"
)

DOVECOT_ITERATE_QUERY = (
    'SELECT u.address AS "user" FROM users u JOIN domains d ON d.name = u.domain WHERE u.active AND d.active'
)

# --------------------------------------------------------------------------- helpers

_SAFE_SECRET = re.compile(r"^[A-Za-z0-9._~+=-]{12,}$")


def check_secret(name: str, value: str) -> str:
    """Database passwords go into libpq conninfo strings, .pgpass and Dovecot config;
    restricting their alphabet keeps every one of those free of quoting rules."""
    if not _SAFE_SECRET.match(value):
        raise ValueError(
            f"{name}: must be at least 12 characters of [A-Za-z0-9._~+=-] (generate it with special characters off)"
        )
    return value


def sql_literal(value: str | int | bool | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if "\0" in value:
        raise ValueError("NUL in SQL literal")
    return "'" + value.replace("'", "''") + "'"


def scram_verifier(password: str, role: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for `password`, with a salt
    derived from the password and role: rendering it twice gives the same text, so the
    step can compare it with pg_authid and only ALTER ROLE when the secret changed, and
    the clear-text password never reaches the server."""
    salt = hmac.new(password.encode(), f"mailstack-scram-salt:{role}".encode(), hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _render(name: str, **values) -> str:
    return templates.render(f"postgresql/{name}", lit=sql_literal, **values)


def primary_host(ctx) -> H.Host:
    return ctx.host_for(H.DB_PRIMARY)


def replica_hosts(ctx) -> list[H.Host]:
    return [h for h in ctx.hosts.values() if h.runs(H.DB_REPLICA)]


def slot_name(host: H.Host) -> str:
    return f"{SLOT_PREFIX}{host.role}"


# --------------------------------------------------------------------------- files


def server_conf(ctx, host: H.Host) -> str:
    """conf.d/mailstack.conf; primary and replicas share the WAL settings because a hot
    standby refuses to start with max_wal_senders etc. below the primary's."""
    listen = ["localhost"]
    if host.runs(H.DB_PRIMARY) and replica_hosts(ctx):
        listen.append(host.private_ip)
    return _render(
        "mailstack.conf.j2",
        listen=", ".join(listen),
        primary=host.runs(H.DB_PRIMARY),
        max_slot_wal_keep_size=MAX_SLOT_WAL_KEEP_SIZE,
    )


def hba_conf(ctx, host: H.Host) -> str:
    replicas = replica_hosts(ctx) if host.runs(H.DB_PRIMARY) else []
    return _render(
        "pg_hba.conf.j2",
        db=DB_NAME,
        lookup=LOOKUP_USER,
        replicator=REPLICATION_USER,
        replicas=replicas,
        quota=QUOTA_USER,
        quota_writers=quota_writers(ctx, host),
    )


def quota_writers(ctx, host: H.Host) -> list[str]:
    """Where Dovecot's quota clone connects from to the primary: the IMAP host's private
    address (a replica host, so the firewall already lets it reach 5432), or loopback
    when the primary runs on the IMAP host."""
    if not host.runs(H.DB_PRIMARY):
        return []
    imap = ctx.host_for(H.IMAP)
    return ["127.0.0.1/32"] if imap.role == host.role else [f"{imap.private_ip}/32"]


def quota_conninfo(ctx, port: int = 5432) -> str:
    """Dovecot's dict connection for the quota clone: always the primary."""
    imap, primary = ctx.host_for(H.IMAP), primary_host(ctx)
    host = "127.0.0.1" if imap.role == primary.role else primary.private_ip
    pw = check_secret("quota_password", ctx.secrets.quota_password)
    return f"host={host} port={port} dbname={DB_NAME} user={QUOTA_USER} password={pw} connect_timeout=3"


def setup_sql(ctx) -> str:
    """Roles, database, schema, grants and replication slots; idempotent."""
    s = ctx.secrets
    return _render(
        "setup.sql.j2",
        db=DB_NAME,
        lookup=LOOKUP_USER,
        replicator=REPLICATION_USER,
        quota=QUOTA_USER,
        quota_table=QUOTA_TABLE,
        quota_verifier=scram_verifier(check_secret("quota_password", s.quota_password), QUOTA_USER),
        lookup_verifier=scram_verifier(check_secret("lookup_password", s.lookup_password), LOOKUP_USER),
        replicator_verifier=scram_verifier(
            check_secret("replication_password", s.replication_password), REPLICATION_USER
        ),
        slots=[slot_name(h) for h in replica_hosts(ctx)],
        slot_prefix=SLOT_PREFIX,
    )


def pgpass(ctx) -> str:
    primary = primary_host(ctx)
    pw = check_secret("replication_password", ctx.secrets.replication_password)
    return f"{primary.private_ip}:*:replication:{REPLICATION_USER}:{pw}\n"


def basebackup_args(ctx, host: H.Host, data_dir: str = PG_DATA) -> list[str]:
    # The slot already exists (the primary step made it), so no -C: a rebuilt replica
    # reuses its slot instead of failing on "already exists". `-c fast`: otherwise the
    # backup waits for a spread checkpoint, minutes on an idle primary.
    return [
        "pg_basebackup",
        "-h",
        primary_host(ctx).private_ip,
        "-U",
        REPLICATION_USER,
        "-D",
        data_dir,
        "-R",
        "-X",
        "stream",
        "-S",
        slot_name(host),
        "-c",
        "fast",
        "-w",
    ]


def sync_sql(settings: Settings, user_hashes: Mapping[str, str]) -> str:
    """One transaction making domains/users/aliases equal to settings. Unchanged rows
    are not touched (their xmin stays), removed ones are deleted."""
    missing = [u.address for u in settings.users if u.address not in user_hashes]
    if missing:
        raise ValueError(f"no password hash for {', '.join(missing)}")
    users = [
        dict(
            address=u.address,
            domain=u.domain,
            local_part=u.local_part,
            hash=user_hashes[u.address],
            quota_mb=settings.quota_mb(u),
            active=u.active,
        )
        for u in settings.users
    ]
    aliases = [
        dict(alias=a.address, destination=d, domain=a.domain, active=a.active)
        for a in settings.all_aliases
        for d in dict.fromkeys(a.to)
    ]
    return _render("sync.sql.j2", domains=list(settings.domains), users=users, aliases=aliases)


# --------------------------------------------------------------------------- bundles


def config_check(data_dir: str = PG_DATA, config_file: str = f"{PG_ETC}/postgresql.conf") -> str:
    """A command that exits non-zero if the config files on disk hold any error.
    pg_file_settings can't be used for this: it reports an invalid value and a valid
    restart-only change with the same 'setting could not be applied'. `postgres -C`
    parses and validates everything, and works beside the running server."""
    return (
        f"runuser -u postgres -- /usr/lib/postgresql/{PG_VERSION}/bin/postgres "
        f"-D {data_dir} -c config_file={config_file} -C wal_level"
    )


def _psql(db: str = "postgres") -> str:
    return f"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -v VERBOSITY=terse -d {db}"


def primary_bundle(ctx, host: H.Host) -> Bundle:
    files = (
        File(PG_CONF, server_conf(ctx, host), 0o644, "postgres", "postgres"),
        File(PG_HBA, hba_conf(ctx, host), 0o640, "postgres", "postgres"),
        File(SETUP_SQL, setup_sql(ctx), 0o600, secret=True),
    )
    script = templates.render(
        "postgresql/primary.sh.j2",
        conf=PG_CONF,
        hba=PG_HBA,
        setup_sql=SETUP_SQL,
        psql=_psql(),
        version=PG_VERSION,
        config_check=config_check(),
    )
    return Bundle(files, script)


def replica_bundle(ctx, host: H.Host) -> Bundle:
    primary = primary_host(ctx)
    files = (
        File(PGPASS, pgpass(ctx), 0o600, "postgres", "postgres", secret=True),
        File(PG_CONF, server_conf(ctx, host), 0o644, "postgres", "postgres"),
        File(PG_HBA, hba_conf(ctx, host), 0o640, "postgres", "postgres"),
    )
    script = templates.render(
        "postgresql/replica.sh.j2",
        conf=PG_CONF,
        hba=PG_HBA,
        pgpass=PGPASS,
        data=PG_DATA,
        version=PG_VERSION,
        psql=_psql(),
        primary_ip=primary.private_ip,
        replicator=REPLICATION_USER,
        slot=slot_name(host),
        basebackup=shlex.join(basebackup_args(ctx, host)),
        db=DB_NAME,
    )
    return Bundle(files, script)


def sync_bundle(ctx) -> Bundle:
    sql = sync_sql(ctx.settings, ctx.secrets.user_hashes)
    files = (File(SYNC_SQL, sql, 0o600, secret=True),)
    script = templates.render("postgresql/sync.sh.j2", sync_sql=SYNC_SQL, psql=_psql(DB_NAME))
    return Bundle(files, script)
