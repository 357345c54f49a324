"""Quota, end to end with the real daemons: mx1's and mx2's rendered smtpd (with
filter-quota), the real Dovecot of the IMAP host (LMTP, count quota, quota clone, quota
warnings) and PostgreSQL with the rendered schema and pg_hba, all in one private network
namespace with each host's private address.

mx2's smtpd reads a streaming replica of the primary, as on the servers.

A mailbox that fills up gets its warnings by mail at 80 % and 95 %; once full, mx1 and
mx2 refuse it at RCPT with 552 while they still take mail for a mailbox with room."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from mailstack import dovecot
from mailstack import hosts as H
from mailstack import postgresql as D
from mailstack import smtpd as mx
from tests.conftest import make_context, settings_from
from tests.daemons.certs import ec_pair
from tests.daemons.dovecot import install, layout_under, make_dirs
from tests.daemons.netns import Netns, start_resolver_and_database
from tests.daemons.ports import wait
from tests.daemons.postgresql import start_replica_in_netns
from tests.daemons.smtpd import MX2_LISTEN, SMTPD, rcpt_reply, stage, start_mx2, swaks
from tests.daemons.unbound import OUTSIDE_OK

pytestmark = pytest.mark.timeout(300)

QUOTA_MB = 1
FULL, ROOM = "bob@example.org", "alice@example.org"
USERS = [
    {"address": ROOM, "quotaMb": QUOTA_MB},
    {"address": FULL, "quotaMb": QUOTA_MB},
    {"address": "carol@example.net"},
]
ALIASES = [{"address": "team@example.net", "to": [ROOM, FULL]}]
REPLICA_PORT = 5433  # mx2's replica, beside the primary on 5432
SLOW = dict(limit=60.0, interval=0.2)  # deliveries, the quota clone and streaming


def _start_dovecot(ns: Netns, ctx, root: Path) -> dovecot.Layout:
    """The IMAP host's Dovecot, as rendered for ha: LMTP and the quota clone's database
    connection on the private addresses, the lookups on 127.0.0.1:5432."""
    base = root / "dovecot"
    layout = layout_under(base)
    make_dirs(layout)
    base.chmod(0o755)
    ec_pair(Path(layout.tls_dir), "imap.example.org")
    host = ctx.hosts["imap"]
    install(ctx, host, layout)
    # The servers log to syslog; here a file, which the warning's dovecot-lda opens as vmail.
    Path(layout.log_path).touch()
    os.chown(layout.log_path, H.VMAIL_UID, H.VMAIL_UID)
    conf = f"{layout.etc}/dovecot.conf"
    for name in dovecot.global_sieves():  # as the deploy step compiles them
        r = ns.run("sievec", "-c", conf, f"{layout.etc}/sieve/{name}")
        assert r.returncode == 0, r.stderr
    p = ns.start("dovecot", "-F", "-c", conf, log=root / "dovecot.out")
    log = Path(layout.log_path)
    try:
        ns.wait_port(host.private_ip, layout.lmtp_port, p, root / "dovecot.out")
    except AssertionError:
        raise AssertionError(log.read_text() if log.exists() else "no dovecot log") from None
    return layout


@pytest.fixture(scope="module")
def quota_stack():
    ctx = make_context(settings_from(users=USERS, aliases=ALIASES))
    mx1, imap_host = ctx.hosts["mx1"], ctx.hosts["imap"]
    root = Path(tempfile.mkdtemp(prefix=f"mailstack-quota-{uuid.uuid4().hex[:8]}-"))
    root.chmod(0o755)
    ns = None
    try:
        conf = stage(ctx, mx1, root, rspamd=False, bind_ip=mx1.private_ip)
        mx2_conf = stage(ctx, ctx.hosts["mx2"], root / "mx2", rspamd=False, bind_ip=MX2_LISTEN)
        ns = Netns(root, mx1.private_ip, [OUTSIDE_OK], more_server_ips=(imap_host.private_ip, MX2_LISTEN))
        primary = D.primary_host(ctx)
        # All three hosts share this namespace, so Dovecot's connection to the primary
        # leaves from mx1's address, not imap's: the rendered line, for that address too.
        # The same holds for mx2's replica connecting for replication.
        hba = D.hba_conf(ctx, primary)
        mx2_ip = ctx.hosts["mx2"].private_ip
        for user, src in ((D.QUOTA_USER, imap_host.private_ip), (D.REPLICATION_USER, mx2_ip)):
            line = next(x for x in hba.splitlines() if user in x and src in x)
            hba += line.replace(src, primary.private_ip) + "\n"
        start_resolver_and_database(ns, ctx, root, listen=f"127.0.0.1,{primary.private_ip}", hba=hba)
        start_replica_in_netns(ns, ctx, root, "mx2", REPLICA_PORT)
        for name in ("pgsql.conf", "quota.conf"):
            f = root / "mx2" / "smtpd" / name
            f.write_text(f.read_text().replace("port=5432", f"port={REPLICA_PORT}"))
        layout = _start_dovecot(ns, ctx, root)
        smtpd = ns.start(SMTPD, "-d", "-f", conf, log=root / "smtpd.log")
        ns.wait_port(mx1.private_ip, 25, smtpd, root / "smtpd.log")
        start_mx2(ns, mx2_conf, root)
        yield dict(ctx=ctx, ns=ns, root=root, layout=layout)
    finally:
        if ns:
            ns.close()
        shutil.rmtree(root, ignore_errors=True)


def _psql(env, sql: str, replica: bool = False) -> str:
    where = (
        ["-h", str(env["root"] / "pg-replica"), "-p", str(REPLICA_PORT)] if replica else ["-h", str(env["root"] / "pg")]
    )
    r = env["ns"].run("runuser", "-u", "postgres", "--", "psql", *where, "-X", "-At", "-d", D.DB_NAME, "-c", sql)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _inbox(env, user: str) -> list[str]:
    local, domain = user.split("@")
    new = Path(env["layout"].vmail) / domain / local / "Maildir" / "new"
    return [p.read_text(errors="replace") for p in sorted(new.glob("*"))] if new.exists() else []


def _send(env, rcpt: str, kbytes: int, subject: str) -> str:
    """One message of about `kbytes` KiB through mx1's port 25, from an outside client."""
    body = env["root"] / f"body-{subject}"
    body.write_text("\n".join(["x" * 76] * (kbytes * 1024 // 77)) + "\n")
    return swaks(
        env["ns"],
        "--server",
        env["ctx"].hosts["mx1"].private_ip,
        "--li",
        OUTSIDE_OK,
        "--from",
        "x@good.test",
        "--to",
        rcpt,
        "--header",
        f"Subject: {subject}",
        "--body",
        f"@{body}",
    )


def _rcpt(env, server: str, rcpt: str) -> str:
    out = swaks(
        env["ns"], "--server", server, "--li", OUTSIDE_OK, "--from", "x@good.test", "--to", rcpt, "--quit-after", "RCPT"
    )
    return rcpt_reply(out).strip()


def _subjects(env, user: str) -> list[str]:
    return [line for m in _inbox(env, user) for line in m.splitlines() if line.startswith("Subject:")]


def test_filling_a_mailbox_warns_then_refuses_it_at_rcpt_on_both_mx(quota_stack):
    env = quota_stack
    mx1_ip = env["ctx"].hosts["mx1"].private_ip
    limit = QUOTA_MB * 1024 * 1024

    def usage(user: str) -> int:
        out = _psql(env, f"SELECT bytes FROM {D.QUOTA_TABLE} WHERE address = '{user}'")
        return int(out) if out else -1

    steps = [(600, "first"), (260, "second"), (200, "third")]  # ~59 %, ~84 %, ~104 %
    for i, (kb, subject) in enumerate(steps, 1):
        assert "250 " in _send(env, FULL, kb, subject).split("DATA", 1)[-1]
        wait(
            lambda: len([s for s in _subjects(env, FULL) if s in {f"Subject: {x}" for _, x in steps}]) == i,
            f"{subject} delivered",
            **SLOW,
        )
        # The quota clone writes Dovecot's count into the primary's table.
        wait(
            lambda: usage(FULL) >= kb * 1024 * (0.9 if i == 1 else 1),
            f"the quota clone after the {subject} message",
            **SLOW,
        )
    assert usage(FULL) >= limit, usage(FULL)
    # mx2 decides on its replica: the copy arrives there by streaming replication.
    wait(
        lambda: (
            _psql(env, f"SELECT bytes FROM {D.QUOTA_TABLE} WHERE address = '{FULL}'", replica=True) == str(usage(FULL))
        ),
        "the usage on mx2's replica",
        **SLOW,
    )
    # Warned once per threshold as it grew (the third message crossed 95 %).
    warnings = [s for s in _subjects(env, FULL) if "full" in s]
    assert warnings == ["Subject: Your mailbox is 80% full", "Subject: Your mailbox is 95% full"], (
        _subjects(env, FULL),
        Path(env["layout"].log_path).read_text()[-4000:].splitlines(),
    )
    # Full: 552 at RCPT from mx1 and mx2 alike, sub-address and case included...
    for server in (mx1_ip, MX2_LISTEN):
        for rcpt in (FULL, "Bob+lists@Example.org"):
            reply = _rcpt(env, server, rcpt)
            assert reply.startswith("<** 552 5.2.2"), (server, rcpt, reply)
        # ...while a mailbox with room, and an alias, are still taken.
        for rcpt in (ROOM, "team@example.net"):
            assert _rcpt(env, server, rcpt).startswith("<-  250"), (server, rcpt)


def test_room_again_after_the_usage_drops(quota_stack):
    env = quota_stack
    mx1_ip = env["ctx"].hosts["mx1"].private_ip
    _psql(env, f"UPDATE {D.QUOTA_TABLE} SET bytes = 0 WHERE address = '{FULL}'")
    assert _rcpt(env, mx1_ip, FULL).startswith("<-  250")


FILTER_SESSION = [
    "config|smtpd-version|7.4.0",
    "config|subsystem|smtp-in",
    "config|ready",
    "filter|0.7|1.0|smtp-in|rcpt-to|s1|t1|bob@example.org",
    "filter|0.7|1.0|smtp-in|rcpt-to|s2|t2|a|b@evil.test",
    "filter|0.7|1.0|smtp-in|rcpt-to|s3",
    "report|0.7|1.0|smtp-in|link-connect|s1|x|pass|1.2.3.4:1|5.6.7.8:25",
]


def test_filter_fails_open_without_its_database(ctx, tmp_path):
    """No database (or garbage on the line): every recipient proceeds, nothing exits."""
    conf = tmp_path / "quota.conf"
    conf.write_text(mx.quota_conf(ctx).replace("host=127.0.0.1", "host=127.0.0.1 port=1"))
    script = tmp_path / "filter-quota"
    script.write_text(mx.bundle(ctx, ctx.hosts["mx1"]).file(mx.FILTER_QUOTA).content)
    r = subprocess.run(
        [sys.executable, script, conf],
        input="\n".join(FILTER_SESSION) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "register|filter|smtp-in|rcpt-to",
        "register|ready",
        "filter-result|s1|t1|proceed",
        "filter-result|s2|t2|proceed",
    ]
    # One failed connection, then it stops trying for a while.
    assert r.stderr.count("database unreachable") == 1, r.stderr
