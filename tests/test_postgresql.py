"""PostgreSQL: the rendered config, roles, schema, slots and sync, applied to a real
PostgreSQL 15 primary and a streaming replica made with the rendered pg_basebackup
command, on loopback in a temp dir."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from mailstack import postgresql as D
from mailstack.context import Context

from .conftest import TEST_HASH, make_context, settings_from
from .daemons.ports import wait
from .daemons.postgresql import PG_BIN, Pg, as_postgres, start_primary, start_replica

pytestmark = pytest.mark.skipif(
    not (PG_BIN / "postgres").exists() or os.geteuid() != 0,
    reason="needs root and PostgreSQL 15",
)
OTHER_HASH = "$6$saltsalt$" + "a" * 86


def loopback_context(settings, primary_ip="127.0.0.11", replica_ip="127.0.0.1") -> Context:
    """The real rendering, with private IPs on loopback: 127.0.0.11 is local on Linux,
    and connections to it come from 127.0.0.1, the replicas' address here."""
    ctx = make_context(settings)
    hosts = {}
    for role, h in ctx.hosts.items():
        ip = primary_ip if h.runs("db-primary") else replica_ip
        hosts[role] = dataclasses.replace(h, private_ip=ip)
    return dataclasses.replace(ctx, hosts=hosts)


def smtpd(pg: Pg, query: str, key: str) -> list[str]:
    """Run a table-postgres query the way it does: a prepared statement, $1 = key."""
    rows = pg.q(f"PREPARE q(text) AS {D.SMTPD_QUERIES[query]}; EXECUTE q({D.sql_literal(key)});")
    return sorted("|".join(r) for r in rows)


@pytest.fixture(scope="module")
def lab():
    """Primary + imap replica, streaming, with the example stack synced in."""
    settings = settings_from()
    ctx = loopback_context(settings)
    base = Path(tempfile.mkdtemp(prefix="mailstack-pg-"))
    base.chmod(0o755)
    clusters = []
    try:
        primary = start_primary(base, ctx)
        clusters.append(primary)
        hashes = dict(ctx.secrets.user_hashes)
        primary.sql(D.sync_sql(settings, hashes), D.DB_NAME)
        replica = start_replica(base, ctx, primary, "imap")
        clusters.append(replica)
        yield dict(ctx=ctx, settings=settings, primary=primary, replica=replica, base=base, hashes=hashes)
    finally:
        for c in reversed(clusters):
            c.stop()
        shutil.rmtree(base, ignore_errors=True)


def snapshot(pg: Pg):
    return {t: pg.q(f"SELECT xmin, * FROM {t} ORDER BY 2, 3") for t in ("domains", "users", "aliases")}


# --------------------------------------------------------------------------- rendering


def test_rendered_primary_config(ctx):
    mx1 = ctx.hosts["mx1"]
    conf = D.server_conf(ctx, mx1)
    assert "listen_addresses = 'localhost, 10.77.1.11'" in conf
    assert "wal_level = replica" in conf and "max_slot_wal_keep_size = 2GB" in conf
    hba = D.hba_conf(ctx, mx1)
    repl = [line.split() for line in hba.splitlines() if line.startswith("host") and "replication" in line]
    assert repl == [
        ["host", "replication", D.REPLICATION_USER, ip, "scram-sha-256"] for ip in ("10.77.1.12/32", "10.77.1.13/32")
    ]
    # Only loopback may use the lookup role, and nothing reaches other databases.
    assert all(line.split()[1] in (D.DB_NAME, "replication") for line in hba.splitlines() if line.startswith("host"))
    assert "listen_addresses = 'localhost'\n" in D.server_conf(ctx, ctx.hosts["imap"])
    assert "replication" not in D.hba_conf(ctx, ctx.hosts["imap"]).replace("# ", "").split("local")[-1]


def test_single_topology_has_no_replicas(single_ctx):
    mx1 = single_ctx.hosts["mx1"]
    assert "listen_addresses = 'localhost'\n" in D.server_conf(single_ctx, mx1)
    assert "pg_create_physical_replication_slot" not in D.setup_sql(single_ctx)
    # ...but stale mailstack slots from an earlier ha stack are still dropped.
    assert "pg_drop_replication_slot" in D.setup_sql(single_ctx)


def test_secrets_stay_out_of_scripts_and_public_files(ctx):
    for bundle in (
        D.primary_bundle(ctx, ctx.hosts["mx1"]),
        D.replica_bundle(ctx, ctx.hosts["imap"]),
        D.sync_bundle(ctx),
    ):
        assert bundle.secret
        for secret in (ctx.secrets.lookup_password, ctx.secrets.replication_password, TEST_HASH):
            assert secret not in bundle.script
            for f in bundle.files:
                if secret in f.content:
                    assert f.secret and f.mode == 0o600, f.path
        # The clear-text role passwords never go to the primary at all.
        for f in bundle.files:
            if f.path == D.SETUP_SQL:
                assert ctx.secrets.lookup_password not in f.content
        subprocess.run(["bash", "-n"], input=bundle.shell("t"), text=True, check=True)


def test_unsafe_secret_rejected(settings):
    ctx = make_context(settings)
    bad = dataclasses.replace(ctx, secrets=dataclasses.replace(ctx.secrets, lookup_password="a b'c"))
    with pytest.raises(ValueError, match="lookup_password"):
        D.setup_sql(bad)


def test_sync_sql_quotes_and_needs_every_hash(settings):
    with pytest.raises(ValueError, match="alice@example.org"):
        D.sync_sql(settings, {})
    assert D.sql_literal("o'brien@example.org") == "'o''brien@example.org'"


# --------------------------------------------------------------------------- real server


def test_replication_streams_and_replica_is_read_only(lab):
    primary, replica = lab["primary"], lab["replica"]
    rows = primary.q("SELECT application_name, state, usename FROM pg_stat_replication", "postgres")
    assert [r[1:] for r in rows] == [["streaming", D.REPLICATION_USER]]
    slots = primary.q("SELECT slot_name, active FROM pg_replication_slots ORDER BY 1", "postgres")
    assert slots == [["mailstack_imap", "t"], ["mailstack_mx2", "f"]]
    primary.sql("INSERT INTO domains (name) VALUES ('replicated.example')", D.DB_NAME)
    try:
        wait(lambda: replica.q("SELECT name FROM domains WHERE name = 'replicated.example'"), "the row on the replica")
    finally:
        primary.sql("DELETE FROM domains WHERE name = 'replicated.example'", D.DB_NAME)
    res = replica.sql("INSERT INTO domains (name) VALUES ('nope.example')", D.DB_NAME, check=False)
    assert res.returncode != 0 and "read-only transaction" in res.stderr
    assert replica.q("SELECT pg_is_in_recovery()", "postgres") == [["t"]]
    # -R recorded the slot and a conninfo naming the primary, which the replica step
    # checks to decide it is already a replica of this primary.
    auto = (replica.data / "postgresql.auto.conf").read_text()
    assert "primary_slot_name = 'mailstack_imap'" in auto
    assert "host=127.0.0.11 " in auto
    # ...and the replica step's identity check: same system identifier both sides.
    ident = as_postgres(
        PG_BIN / "psql",
        "-X",
        "-w",
        "-Atc",
        "IDENTIFY_SYSTEM",
        f"host=127.0.0.11 port={primary.port} user={D.REPLICATION_USER} dbname=replication replication=true",
        env={"PGPASSFILE": str(replica.dir / "pgpass")},
    ).stdout.split("|")[0]
    ctl = as_postgres(PG_BIN / "pg_controldata", replica.data).stdout
    assert f"Database system identifier:           {ident}" in ctl


def test_settings_applied(lab):
    primary = lab["primary"]
    rows = primary.q(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('max_slot_wal_keep_size', 'wal_level', 'listen_addresses', 'hot_standby') ORDER BY 1",
        "postgres",
    )
    assert rows == [
        ["hot_standby", "on"],
        ["listen_addresses", "localhost, 127.0.0.11"],
        ["max_slot_wal_keep_size", "2048"],
        ["wal_level", "replica"],
    ]
    assert primary.q("SELECT count(*) FROM pg_settings WHERE pending_restart", "postgres") == [["0"]]
    assert primary.q("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL", "postgres") == [["0"]]


def test_reload_reports_settings_that_need_a_restart(lab):
    """What reload.sh does: reload, wait for the new load time, ask pending_restart."""
    primary = lab["primary"]
    before = (primary.dir / "mailstack.conf").read_text()

    def reload_then_pending(text: str) -> str:
        t0 = primary.q("SELECT pg_conf_load_time()", "postgres")[0][0]
        primary.write("mailstack.conf", text)
        primary.reload()
        wait(lambda: primary.q(f"SELECT pg_conf_load_time() > '{t0}'", "postgres") == [["t"]], "reload")
        return primary.q("SELECT count(*) FROM pg_settings WHERE pending_restart", "postgres")[0][0]

    try:
        assert reload_then_pending(before.replace("2GB", "3GB")) == "0"
        assert primary.q("SHOW max_slot_wal_keep_size", "postgres") == [["3GB"]]
        assert reload_then_pending(before.replace("max_wal_senders = 10", "max_wal_senders = 11")) == "1"
    finally:
        assert reload_then_pending(before) == "0"


def test_replication_only_from_replica_addresses(lab):
    primary, ctx = lab["primary"], lab["ctx"]
    ident = lambda: as_postgres(  # noqa: E731
        PG_BIN / "psql",
        "-X",
        "-w",
        "-Atc",
        "IDENTIFY_SYSTEM",
        f"host=127.0.0.11 port={primary.port} user={D.REPLICATION_USER} dbname=replication replication=true",
        env={"PGPASSFILE": str(lab["replica"].dir / "pgpass")},
        check=False,
    )
    assert ident().returncode == 0
    elsewhere = loopback_context(lab["settings"], replica_ip="127.0.0.12")
    hba = (primary.dir / "pg_hba.conf").read_text()
    try:
        primary.write("pg_hba.conf", D.hba_conf(elsewhere, D.primary_host(elsewhere)))
        primary.reload()
        wait(lambda: ident().returncode != 0, "the new pg_hba.conf")
        assert "no pg_hba.conf entry for replication connection" in ident().stderr
    finally:
        primary.write("pg_hba.conf", hba)
        primary.reload()
        wait(lambda: ident().returncode == 0, "the old pg_hba.conf")
    # The lookup role gets no replication and no other database.
    pw = ctx.secrets.lookup_password
    assert primary.as_user(D.LOOKUP_USER, pw, "SELECT 1", db="postgres").returncode != 0
    assert (
        primary.as_user(D.LOOKUP_USER, pw, "IDENTIFY_SYSTEM", db="replication", extra="replication=true").returncode
        != 0
    )


@pytest.mark.parametrize("where", ["primary", "replica"])
def test_smtpd_queries(lab, where):
    pg = lab[where]
    assert smtpd(pg, "query_domain", "example.net") == ["example.net"]
    assert smtpd(pg, "query_domain", "example.com") == []
    # A mailbox resolves to the vmail user; aliases to their destinations.
    assert smtpd(pg, "query_alias", "alice@example.org") == ["vmail"]
    assert smtpd(pg, "query_alias", "team@example.net") == sorted(
        ["alice@example.org", "bob@example.org", "carol@example.net"]
    )
    assert smtpd(pg, "query_alias", "abuse@example.org") == ["postmaster@example.org"]
    assert smtpd(pg, "query_alias", "nobody@example.org") == []
    assert smtpd(pg, "query_credentials", "alice@example.org") == [f"alice@example.org|{TEST_HASH}"]
    assert smtpd(pg, "query_credentials", "postmaster@example.org") == []
    # alice may send as herself and the aliases that deliver to her, not as bob.
    alice_may = smtpd(pg, "query_mailaddrmap", "alice@example.org")
    assert alice_may == sorted(
        [
            "abuse@example.net",
            "alice@example.org",
            "dmarc-reports@example.org",
            "postmaster@example.net",
            "postmaster@example.org",
            "team@example.net",
            "tls-reports@example.org",
        ]
    )
    assert "bob@example.org" not in alice_may
    assert smtpd(pg, "query_mailaddrmap", "team@example.net") == []
    assert smtpd(pg, "query_mailaddr", "bob@example.org") == ["bob@example.org"]
    assert smtpd(pg, "query_mailaddr", "abuse@example.org") == ["abuse@example.org"]
    assert smtpd(pg, "query_mailaddr", "nobody@example.org") == []


def test_dovecot_queries(lab):
    pg = lab["replica"]
    user = lambda q, who: pg.q(q.replace("%u", who))  # noqa: E731
    assert user(D.DOVECOT_PASSWORD_QUERY, "bob@example.org") == [["bob@example.org", TEST_HASH]]
    assert user(D.DOVECOT_PASSWORD_QUERY, "team@example.net") == []
    uq = D.dovecot_user_query("/var/vmail", 5000)
    assert user(uq, "bob@example.org") == [["5000", "5000", "/var/vmail/example.org/bob", "*:storage=5120M"]]
    assert pg.q(D.DOVECOT_ITERATE_QUERY.replace('AS "user"', "") + " ORDER BY 1") == [
        ["alice@example.org"],
        ["bob@example.org"],
        ["carol@example.net"],
    ]


def test_lookup_role_reads_but_cannot_write(lab):
    pw = lab["ctx"].secrets.lookup_password
    for where in ("primary", "replica"):
        pg = lab[where]
        ok = pg.as_user(D.LOOKUP_USER, pw, "SELECT count(*) FROM users")
        assert ok.returncode == 0 and ok.stdout.strip() == "3", ok.stderr
    res = lab["primary"].as_user(D.LOOKUP_USER, pw, "UPDATE users SET quota_mb = 1")
    assert res.returncode != 0 and "permission denied" in res.stderr
    res = lab["primary"].as_user(D.LOOKUP_USER, pw, "CREATE TABLE t (x int)")
    assert res.returncode != 0 and "permission denied" in res.stderr
    assert lab["primary"].as_user(D.LOOKUP_USER, "wrong-password", "SELECT 1").returncode != 0


def test_quota_role_writes_usage_only_and_replicas_decide(lab):
    """Dovecot's quota clone writes usage as the quota role (an upsert, as its dict
    does); it can't touch anything else, and the RCPT query on a replica sees it."""
    primary, pw = lab["primary"], lab["ctx"].secrets.quota_password
    upsert = (
        f"INSERT INTO {D.QUOTA_TABLE} (address, bytes) VALUES ('bob@example.org', {{n}}) "
        "ON CONFLICT (address) DO UPDATE SET bytes = EXCLUDED.bytes"
    )
    full = 5120 * 1048576  # bob's quota in the example stack
    try:
        res = primary.as_user(D.QUOTA_USER, pw, upsert.format(n=full - 1))
        assert res.returncode == 0, res.stderr
        for sql in (
            "UPDATE users SET quota_mb = 0",
            "SELECT count(*) FROM users",
            "DELETE FROM aliases",
            "CREATE TABLE t (x int)",
        ):
            res = primary.as_user(D.QUOTA_USER, pw, sql)
            assert res.returncode != 0 and "permission denied" in res.stderr, sql
        res = lab["primary"].as_user(
            D.LOOKUP_USER, lab["ctx"].secrets.lookup_password, f"UPDATE {D.QUOTA_TABLE} SET bytes = 0"
        )
        assert res.returncode != 0 and "permission denied" in res.stderr

        def full_on_replica(rcpt):
            return lab["replica"].q(f"PREPARE f(text) AS {D.QUOTA_FULL_QUERY}; EXECUTE f({D.sql_literal(rcpt)});")

        wait(
            lambda: lab["replica"].q(f"SELECT bytes FROM {D.QUOTA_TABLE}") == [[str(full - 1)]],
            "the usage on the replica",
        )
        assert full_on_replica("bob@example.org") == []
        assert primary.as_user(D.QUOTA_USER, pw, upsert.format(n=full)).returncode == 0
        wait(lambda: full_on_replica("Bob+x@Example.org") == [["bob@example.org"]], "bob full")
        assert full_on_replica("alice@example.org") == [] and full_on_replica("team@example.net") == []
    finally:
        primary.sql(f"DELETE FROM {D.QUOTA_TABLE}", D.DB_NAME)


def test_setup_and_sync_are_idempotent(lab):
    primary, ctx, settings = lab["primary"], lab["ctx"], lab["settings"]
    roles = "SELECT rolname, xmin, rolpassword FROM pg_authid WHERE rolname LIKE 'mailstack%' ORDER BY 1"
    before_roles = primary.q(roles, "postgres")
    before = snapshot(primary)
    primary.sql(D.setup_sql(ctx))
    primary.sql(D.sync_sql(settings, lab["hashes"]), D.DB_NAME)
    assert primary.q(roles, "postgres") == before_roles
    assert snapshot(primary) == before
    # 8 alias rows of the example stack, and abuse@example.net made by the stack.
    assert len(before["users"]) == 3 and len(before["aliases"]) == 9


def test_sync_updates_renames_and_removes(lab):
    primary, settings = lab["primary"], lab["settings"]
    users = [
        {"address": "alice@example.org", "quotaMb": 20480},
        {"address": "robert@example.org", "quotaMb": 5120},  # bob, renamed
        {"address": "carol@example.net", "active": False},
    ]
    aliases = [
        {"address": "postmaster@example.org", "to": ["alice@example.org"]},
        {"address": "postmaster@example.net", "to": ["alice@example.org"]},
        {"address": "team@example.net", "to": ["alice@example.org", "robert@example.org"]},
    ]
    changed = settings_from(users=users, aliases=aliases)
    hashes = {"alice@example.org": OTHER_HASH, "robert@example.org": TEST_HASH, "carol@example.net": TEST_HASH}
    before = snapshot(primary)
    try:
        primary.sql(D.sync_sql(changed, hashes), D.DB_NAME)
        after = snapshot(primary)
        assert [r[1:3] for r in after["users"]] == [
            ["alice@example.org", "example.org"],
            ["carol@example.net", "example.net"],
            ["robert@example.org", "example.org"],
        ]
        assert smtpd(primary, "query_credentials", "alice@example.org") == [f"alice@example.org|{OTHER_HASH}"]
        assert smtpd(primary, "query_alias", "bob@example.org") == []
        assert smtpd(primary, "query_alias", "carol@example.net") == []  # inactive
        assert smtpd(primary, "query_credentials", "carol@example.net") == []
        assert smtpd(primary, "query_alias", "team@example.net") == ["alice@example.org", "robert@example.org"]
        # Role addresses the settings dropped go to the admin mailbox (the first user).
        assert smtpd(primary, "query_alias", "abuse@example.org") == ["alice@example.org"]
        assert len(after["aliases"]) == 4 + 4
        # The unchanged alias rows were not rewritten.
        keep = [r for r in before["aliases"] if r[1] == "postmaster@example.net"]
        assert keep and keep[0] in after["aliases"]
        wait(
            lambda: lab["replica"].q("SELECT quota_mb FROM users WHERE address = 'robert@example.org'") == [["5120"]],
            "the rename on the replica",
        )
        primary.sql(D.sync_sql(changed, hashes), D.DB_NAME)
        assert snapshot(primary) == after
    finally:
        primary.sql(D.sync_sql(settings, lab["hashes"]), D.DB_NAME)
    assert [r[1:7] for r in snapshot(primary)["users"]] == [r[1:7] for r in before["users"]]
    assert smtpd(primary, "query_alias", "bob@example.org") == ["vmail"]


def test_schema_rejects_bad_rows(lab):
    primary = lab["primary"]
    for sql in [
        "INSERT INTO users (address, domain, local_part, password_hash) "
        "VALUES ('eve@example.org', 'example.org', 'eve', '{PLAIN}secret')",
        "INSERT INTO users (address, domain, local_part, password_hash) "
        f"VALUES ('eve@nowhere.example', 'nowhere.example', 'eve', '{TEST_HASH}')",
        "INSERT INTO users (address, domain, local_part, password_hash) "
        f"VALUES ('eve@example.org', 'example.net', 'eve', '{TEST_HASH}')",
        "INSERT INTO aliases (alias, destination, domain) VALUES ('x@example.org', 'x@example.org', 'example.org')",
        "INSERT INTO aliases (alias, destination, domain) VALUES ('Y@example.org', 'a@b.example', 'example.org')",
        "INSERT INTO aliases (alias, destination, domain) "
        "VALUES ('postmaster@example.org', 'alice@example.org', 'example.org')",
    ]:
        res = primary.sql(sql, D.DB_NAME, check=False)
        assert res.returncode != 0, sql


def test_config_check_ignores_restart_only_changes_but_catches_errors(lab):
    """The primary step's check of new config files, run beside the running server: a
    changed restart-only setting is fine, an invalid value (even of a restart-only
    setting, which pg_file_settings can't tell apart) is an error."""
    primary = lab["primary"]
    script = D.primary_bundle(lab["ctx"], D.primary_host(lab["ctx"])).script
    assert D.config_check() in script
    check = D.config_check(str(primary.data), str(primary.dir / "postgresql.conf"))
    before = (primary.dir / "mailstack.conf").read_text()

    def ok(text: str) -> bool:
        primary.write("mailstack.conf", text)
        return subprocess.run(["bash", "-c", check], capture_output=True, timeout=30).returncode == 0

    try:
        assert ok(before)
        assert ok(before.replace("max_wal_senders = 10", "max_wal_senders = 12"))
        assert not ok(before + "\nwal_level = bogus\n")
        assert not ok(before + "\nwork_mem = lots\n")
        assert not ok(before + "\nthis is not a setting\n")
    finally:
        primary.write("mailstack.conf", before)


def test_config_pending_asks_the_server(lab):
    """reload.sh's config_pending: true while the server hasn't loaded the files on disk
    (e.g. a previous run died between install and reload), false once it has."""
    from mailstack import templates

    primary = lab["primary"]
    conf = primary.dir / "mailstack.conf"
    program = "\n".join(
        [
            f"PSQL='runuser -u postgres -- {PG_BIN}/psql -X -q -h {primary.dir} -p {primary.port} -d postgres'",
            templates.read("postgresql/reload.sh"),
            f"if config_pending {conf}; then echo pending; else echo applied; fi",
        ]
    )

    def state() -> str:
        r = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    primary.reload()
    wait(lambda: state() == "applied", "the reload to be seen")
    primary.write("mailstack.conf", conf.read_text())  # newer than the last load
    assert state() == "pending"
    primary.reload()
    wait(lambda: state() == "applied", "the reload to be seen")
