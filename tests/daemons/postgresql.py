"""PostgreSQL 15: throwaway clusters on loopback with the rendered config (`Pg`,
`start_primary`, `start_replica`), and a cluster inside a `Netns` holding the stack's
schema and accounts (`start_in_netns`, `stop_in_netns`, `restart_in_netns`,
`start_replica_in_netns`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mailstack import postgresql as D
from tests.daemons.ports import free_port, wait

PG_BIN = Path(f"/usr/lib/postgresql/{D.PG_VERSION}/bin")


def as_postgres(*cmd, input=None, env=None, check=True):
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, cmd)],
        input=input,
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
        check=check,
        timeout=60,
    )


class Pg:
    """One throwaway cluster: rendered mailstack.conf/pg_hba.conf, test port/socket."""

    def __init__(self, base: Path, name: str):
        self.dir = base / name
        self.data = self.dir / "data"
        self.port = free_port()
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")

    def initdb(self):
        as_postgres(
            PG_BIN / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=peer",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    def configure(self, conf: str, hba: str):
        self.write("mailstack.conf", conf)
        self.write("pg_hba.conf", hba)
        self.write(
            "postgresql.conf",
            "\n".join(
                [
                    f"port = {self.port}",
                    f"unix_socket_directories = '{self.dir}'",
                    f"hba_file = '{self.dir}/pg_hba.conf'",
                    "fsync = off",
                    "shared_buffers = 16MB",
                    f"include '{self.dir}/mailstack.conf'",
                    "",
                ]
            ),
        )

    def write(self, name: str, text: str):
        p = self.dir / name
        p.write_text(text)
        shutil.chown(p, "postgres", "postgres")
        p.chmod(0o600)

    def start(self):
        # Our own child (not pg_ctl's orphan), so we reap it and leave no zombie behind.
        with open(self.dir / "log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    PG_BIN / "postgres",
                    "-D",
                    self.data,
                    "-c",
                    f"config_file={self.dir}/postgresql.conf",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            wait(
                lambda: (
                    self.proc.poll() is None
                    and as_postgres(
                        PG_BIN / "pg_isready", "-q", "-h", self.dir, "-p", self.port, check=False
                    ).returncode
                    == 0
                ),
                "postgres to accept connections",
                60,
            )
        except AssertionError:
            raise AssertionError((self.dir / "log").read_text()) from None

    def stop(self):
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def reload(self):
        as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "reload")

    def sql(self, sql: str, db: str = "postgres", check=True) -> subprocess.CompletedProcess:
        """As the postgres superuser over the unix socket (peer), like the deploy steps."""
        return as_postgres(
            PG_BIN / "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-h",
            self.dir,
            "-p",
            self.port,
            "-d",
            db,
            input=sql,
            check=check,
        )

    def q(self, sql: str, db: str = D.DB_NAME) -> list[list[str]]:
        out = self.sql(sql, db).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def as_user(
        self, user: str, password: str, sql: str, db: str = D.DB_NAME, host: str = "127.0.0.1", extra: str = ""
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                PG_BIN / "psql",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                f"host={host} port={self.port} dbname={db} user={user} {extra}",
            ],
            input=sql,
            text=True,
            capture_output=True,
            timeout=30,
            env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
        )


def start_primary(base: Path, ctx) -> Pg:
    primary = Pg(base, "primary")
    host = D.primary_host(ctx)
    primary.initdb()
    primary.configure(D.server_conf(ctx, host), D.hba_conf(ctx, host))
    primary.start()
    primary.sql(D.setup_sql(ctx))
    return primary


def start_replica(base: Path, ctx, primary: Pg, role: str) -> Pg:
    replica = Pg(base, role)
    host = ctx.hosts[role]
    replica.write("pgpass", D.pgpass(ctx))
    cmd = D.basebackup_args(ctx, host, str(replica.data))
    as_postgres(PG_BIN / cmd[0], *cmd[1:], "-p", primary.port, env={"PGPASSFILE": str(replica.dir / "pgpass")})
    replica.configure(D.server_conf(ctx, host), D.hba_conf(ctx, host))
    replica.start()
    return replica


def start_in_netns(ns, ctx, root: Path, listen: str = "127.0.0.1", hba: str | None = None):
    """PostgreSQL on 127.0.0.1:5432 in ns's server namespace (socket in root/pg), with
    the stack's schema and accounts. listen, hba: more addresses, and the rendered
    pg_hba.conf instead of initdb's."""
    pg = root / "pg"
    pg.mkdir()
    shutil.chown(pg, "postgres", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            PG_BIN / "initdb",
            "-D",
            pg / "data",
            "-A",
            "trust",
            "--auth-host=scram-sha-256",
        ],
        check=True,
        capture_output=True,
    )
    if hba is not None:
        (pg / "data" / "pg_hba.conf").write_text(hba)
    postgres = restart_in_netns(ns, root, listen)
    psql = ["runuser", "-u", "postgres", "--", PG_BIN / "psql", "-h", pg, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for db, sql in (("postgres", D.setup_sql(ctx)), (D.DB_NAME, D.sync_sql(ctx.settings, ctx.secrets.user_hashes))):
        r = ns.run(*psql, "-d", db, input=sql)
        assert r.returncode == 0, r.stderr
    return postgres


def stop_in_netns(root: Path) -> None:
    """Stop start_in_netns's PostgreSQL (a fast shutdown, as systemd's stop does)."""
    pg = root / "pg"
    as_postgres(PG_BIN / "pg_ctl", "-D", pg / "data", "-m", "fast", "-w", "stop")


def restart_in_netns(ns, root: Path, listen: str = "127.0.0.1"):
    """(Re)start start_in_netns's PostgreSQL on its data directory; back once it accepts
    connections. listen: as given to start_in_netns."""
    pg = root / "pg"
    postgres = ns.start(
        "runuser",
        "-u",
        "postgres",
        "--",
        PG_BIN / "postgres",
        "-D",
        pg / "data",
        "-k",
        pg,
        "-c",
        f"listen_addresses={listen}",
        "-c",
        "port=5432",
        log=root / "postgres.log",
    )
    _wait_accepting(ns, pg, 5432, postgres, root / "postgres.log")
    return postgres


def start_replica_in_netns(ns, ctx, root: Path, role: str, port: int) -> None:
    """role's replica, made the way its deploy step makes it (database.basebackup_args,
    its slot, the replication role's .pgpass), in root/pg-replica listening on port."""
    rep = root / "pg-replica"
    rep.mkdir()
    shutil.chown(rep, "postgres", "postgres")
    pgpass = rep / "pgpass"
    pgpass.write_text(D.pgpass(ctx))
    shutil.chown(pgpass, "postgres", "postgres")
    pgpass.chmod(0o600)
    cmd = D.basebackup_args(ctx, ctx.hosts[role], str(rep / "data"))
    r = ns.run("runuser", "-u", "postgres", "--", "env", f"PGPASSFILE={pgpass}", PG_BIN / cmd[0], *cmd[1:])
    assert r.returncode == 0, r.stderr
    p = ns.start(
        "runuser",
        "-u",
        "postgres",
        "--",
        PG_BIN / "postgres",
        "-D",
        rep / "data",
        "-k",
        rep,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"port={port}",
        log=root / "replica.log",
    )
    _wait_accepting(ns, rep, port, p, root / "replica.log")


def _wait_accepting(ns, sockdir: Path, port: int, proc, log: Path) -> None:
    """PostgreSQL listens before it accepts connections ("the database system is starting
    up", seen on a loaded machine): wait for the port, then for pg_isready to say so."""
    ns.wait_port("127.0.0.1", port, proc, log)
    wait(
        lambda: (
            proc.poll() is None
            and ns.run(
                "runuser", "-u", "postgres", "--", PG_BIN / "pg_isready", "-q", "-h", sockdir, "-p", port
            ).returncode
            == 0
        ),
        f"PostgreSQL on port {port} to accept connections (log: {log})",
        limit=60,
    )
