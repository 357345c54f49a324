"""Dovecot 2.3: the rendered config passes `doveconf -n`, and the real daemon, started
with it (paths and ports moved into a temp dir) against a real PostgreSQL 15 holding the
synced example stack, logs users in over IMAPS, delivers over LMTP and files spam into
Junk through the global sieve script."""

from __future__ import annotations

import base64
import email.message
import imaplib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab import tls_scan
from mailstack import dovecot as imap
from mailstack import hosts as H
from mailstack import postgresql as D

from .conftest import TEST_HASH, TEST_PASSWORD, make_context, settings_from
from .daemons.dovecot import imap_host, with_vmail_user
from .daemons.ports import wait

needs_dovecot = pytest.mark.skipif(
    shutil.which("dovecot") is None or os.geteuid() != 0, reason="needs root and Dovecot"
)


@needs_dovecot
@pytest.mark.parametrize("topology", ["ha", "single"])
def test_doveconf_accepts_rendered_config(topology, tmp_path):
    ctx = make_context(settings_from(topology=topology))
    host = imap_host(ctx)
    conf = tmp_path / "dovecot.conf"
    conf.write_text(imap.dovecot_conf(ctx, host))
    out = subprocess.run(["doveconf", "-n", "-c", conf], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "protocols = imap lmtp sieve" in text
    assert f"hostname = {host.fqdn}" in text
    assert "ssl = required" in text
    # IMAP only over TLS on 993; LMTP only on the address mx1 delivers to.
    assert "inet_listener imap {\n    port = 0\n  }" in text
    lmtp_addr = "10.77.1.12" if topology == "ha" else "127.0.0.1"
    assert f"inet_listener lmtp {{\n    address = {lmtp_addr}\n    port = 24\n  }}" in text
    assert "port = 4190" in text and "port = 993" in text


def test_bundle_files_and_secrets(ctx):
    b = imap.bundle(ctx, imap_host(ctx))
    sql = b.file(imap.SQL_CONF)
    assert (sql.owner, sql.group, sql.mode, sql.secret) == ("root", "dovecot", 0o640, True)
    assert ctx.secrets.lookup_password in sql.content
    assert ctx.secrets.lookup_password not in b.file(imap.CONF).content + b.script
    assert "doveconf -n -c" in b.script and "sievec" in b.script
    subprocess.run(["bash", "-n"], input=b.shell("t"), text=True, check=True)


# --------------------------------------------------------------------------- real daemon


def tls_context() -> ssl.SSLContext:
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


class _IMAPS(imaplib.IMAP4_SSL):
    source = "127.0.0.1"

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_login(dv, user: str, password: str, source: str = "127.0.0.1") -> str:
    """Log in and out; returns "OK" or the server's refusal. Failures come from their
    own loopback address, so Dovecot's per-IP auth penalty never slows the good logins."""
    conn = type("C", (_IMAPS,), {"source": source})
    with conn("127.0.0.1", dv["layout"].imaps_port, ssl_context=tls_context(), timeout=30) as c:
        try:
            return c.login(user, password)[0]
        except imaplib.IMAP4.error as exc:
            return str(exc)


def refused_logins(dv, attempts) -> list[str]:
    """Each failure costs auth_failure_delay (2 s); pay it once, in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    sources = [f"127.0.1.{next(_fresh_source)}" for _ in attempts]
    with ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(lambda a: imap_login(dv, *a), [(u, p, src) for (u, p), src in zip(attempts, sources)]))


_fresh_source = iter(range(1, 255))


def maildir(dv, user: str, folder: str = "") -> Path:
    local, domain = user.split("@")
    return Path(dv["layout"].vmail) / domain / local / "Maildir" / (f".{folder}" if folder else "")


def message(subject: str, **headers) -> str:
    m = email.message.EmailMessage()
    m["From"] = "sender@outside.example"
    m["To"] = "alice@example.org"
    m["Subject"] = subject
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(f"body of {subject}\n")
    return m.as_string()


def lmtp(dv, rcpts, msg: str):
    with smtplib.LMTP("127.0.0.1", dv["layout"].lmtp_port, timeout=20) as c:
        return c.sendmail("sender@outside.example", rcpts, msg)


def new_messages(path: Path) -> list[str]:
    return [p.read_text() for p in sorted((path / "new").glob("*"))] if (path / "new").exists() else []


@needs_dovecot
def test_imaps_login_with_stored_hash(dovecot):
    assert TEST_HASH.startswith("$2b$")  # BLF-CRYPT through crypt(), no {SCHEME} prefix
    with imaplib.IMAP4_SSL("127.0.0.1", dovecot["layout"].imaps_port, ssl_context=tls_context(), timeout=20) as c:
        typ, _ = c.login("Alice@Example.org", TEST_PASSWORD)
        assert typ == "OK"
        typ, boxes = c.list()
        listed = b"\n".join(boxes).decode()
        for box, use in (("Junk", "\\Junk"), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash")):
            assert use in listed and box in listed, listed
        typ, quota = c.getquotaroot("INBOX")
        # bob has 5120 MB, alice the stack's 10240 MB: the rule comes from users.quota_mb.
        assert b"STORAGE 0 10485760" in b" ".join(x for x in quota[1] if isinstance(x, bytes)), quota
    refused = refused_logins(
        dovecot, [("alice@example.org", "wrong password"), ("postmaster@example.org", TEST_PASSWORD)]
    )  # an alias is no login
    assert all("AUTHENTICATIONFAILED" in r for r in refused), refused


@needs_dovecot
@pytest.mark.parametrize("listener", ["imaps", "sieve"])
def test_tls_offers_only_the_intermediate_profile(dovecot, listener):
    """sslyze against the real Dovecot, on 993 and through ManageSieve's STARTTLS: TLS 1.2
    and 1.3 only, and on 1.2 only Mozilla's intermediate suites."""
    layout, name = dovecot["layout"], dovecot["host"].fqdn
    accepted = (
        tls_scan.scan("127.0.0.1", layout.imaps_port, name=name)
        if listener == "imaps"
        else tls_scan.scan("127.0.0.2", layout.sieve_port, "sieve", name=name)
    )
    assert tls_scan.problems(accepted) == [], accepted


@needs_dovecot
def test_plaintext_login_refused_without_tls(dovecot):
    """ManageSieve is the one port that starts in clear text: AUTHENTICATE must fail
    there until STARTTLS. Dovecot trusts a client whose address equals the server's,
    so connect to 127.0.0.2 (from 127.0.0.1) to look like a remote client."""
    with socket.create_connection(("127.0.0.2", dovecot["layout"].sieve_port), timeout=20) as s:
        f = s.makefile("rwb")
        greeting = b""
        while not greeting.endswith(b"\r\n") or not greeting.splitlines()[-1].startswith(b"OK"):
            greeting += f.readline()
        assert b'"STARTTLS"' in greeting
        token = base64.b64encode(f"\0alice@example.org\0{TEST_PASSWORD}".encode()).decode()
        f.write(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
        f.flush()
        reply = f.readline()
        assert reply.startswith(b"NO"), reply


@needs_dovecot
def test_lmtp_delivery_and_spam_to_junk(dovecot):
    inbox, junk = maildir(dovecot, "bob@example.org"), maildir(dovecot, "bob@example.org", "Junk")
    assert lmtp(dovecot, ["bob@example.org"], message("hello bob")) == {}
    assert lmtp(dovecot, ["bob+lists@example.org"], message("tagged")) == {}
    assert lmtp(dovecot, ["bob@example.org"], message("buy now", X_Spam="Yes")) == {}
    inbox_msgs = new_messages(inbox)
    junk_msgs = new_messages(junk)
    subjects = sorted(line for m in inbox_msgs for line in m.splitlines() if line.startswith("Subject:"))
    assert subjects == ["Subject: hello bob", "Subject: tagged"]  # bob+lists@ lands in INBOX
    assert len(junk_msgs) == 1 and "Subject: buy now" in junk_msgs[0]
    # Received header names the configured host, not the machine's short name.
    assert f"by {dovecot['host'].fqdn}" in inbox_msgs[0]
    st = inbox.parent.stat()
    assert (st.st_uid, st.st_gid) == (H.VMAIL_UID, H.VMAIL_UID)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        lmtp(dovecot, ["nobody@example.org"], message("lost"))
    assert err.value.recipients["nobody@example.org"][0] == 550


@needs_dovecot
def test_inactive_user_cannot_log_in_or_receive(dovecot):
    settings = settings_from(topology="single")
    primary = dovecot["primary"]
    hashes = dict(dovecot["ctx"].secrets.user_hashes)
    users = [u.model_dump(by_alias=True, exclude_none=True) for u in settings.users]
    for u in users:
        if u["address"] == "carol@example.net":
            u["active"] = False
    aliases = [a.model_dump(by_alias=True) for a in settings.aliases]
    off = settings_from(topology="single", users=users, aliases=aliases)
    try:
        primary.sql(D.sync_sql(off, hashes), D.DB_NAME)
        refused = refused_logins(dovecot, [("carol@example.net", TEST_PASSWORD)])
        assert "AUTHENTICATIONFAILED" in refused[0], refused
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            lmtp(dovecot, ["carol@example.net"], message("for carol"))
    finally:
        primary.sql(D.sync_sql(settings, hashes), D.DB_NAME)
    assert imap_login(dovecot, "carol@example.net", TEST_PASSWORD) == "OK"


def test_sieve_mail_leaves_through_mx1_relay_port(ctx, single_ctx):
    """imap has no MTA: redirects and vacation replies go to mx1's private relay port,
    which smtpd accepts from imap for any destination (and the host firewall allows)."""
    from mailstack import dovecot as imap
    from mailstack import firewall, smtpd

    conf = imap.dovecot_conf(ctx, ctx.hosts["imap"])
    assert f"submission_host = {ctx.hosts['mx1'].private_ip}:{smtpd.RELAY_PORT}" in conf
    flows = firewall.private_flows(ctx.settings, ctx.hosts["mx1"])
    assert any(f.port == smtpd.RELAY_PORT and ctx.hosts["imap"].private_ip in f.sources for f in flows)
    assert 'match from src <imap> tag INTERNAL for any action "outbound"' in smtpd.smtpd_conf(ctx, ctx.hosts["mx1"])
    # One host: Dovecot hands such mail to the local OpenSMTPD's sendmail.
    assert "submission_host" not in imap.dovecot_conf(single_ctx, single_ctx.hosts["mx1"])


def managesieve(port: int, user: str, password: str, commands: list[bytes]) -> list[bytes]:
    """A minimal ManageSieve client (RFC 5804; Python has none): STARTTLS, AUTHENTICATE
    PLAIN, then each command; returns the final reply line of each."""

    def reply(s) -> bytes:
        """The response line (OK, NO or BYE), with its literal text if it has one."""
        buf = b""
        while True:
            lines = buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line.startswith((b"OK", b"NO", b"BYE")):
                    literal = re.search(rb"\{(\d+)\+?\}$", line)
                    if not literal:
                        return line
                    rest = b"\r\n".join(lines[i + 1 :])
                    if len(rest) >= int(literal[1]):
                        return line + b" " + rest[: int(literal[1])]
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk

    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        assert reply(raw).startswith(b"OK")
        with tls_context().wrap_socket(raw) as s:
            reply(s)  # capabilities again, now with SASL
            token = base64.b64encode(f"\0{user}\0{password}".encode())
            s.sendall(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
            assert reply(s).startswith(b"OK"), "ManageSieve login failed"
            out = []
            for cmd in commands:
                s.sendall(cmd)
                out.append(reply(s))
            s.sendall(b"LOGOUT\r\n")
            return out


FILE_INTO = b'require ["fileinto"];\r\nif header :contains "subject" "[lists]" { fileinto "Lists"; }\r\n'


@needs_dovecot
def test_managesieve_upload_takes_effect(dovecot):
    """A script uploaded and activated over ManageSieve (port 4190) files the next LMTP
    delivery; a broken script is refused at upload and leaves the active one alone."""
    user = "carol@example.net"
    broken = b'require ["fileinto"];\r\nfileinto "x"\r\n'  # no semicolon
    replies = managesieve(
        dovecot["layout"].sieve_port,
        user,
        TEST_PASSWORD,
        [
            b'PUTSCRIPT "rules" {%d+}\r\n' % len(FILE_INTO) + FILE_INTO + b"\r\n",
            b'SETACTIVE "rules"\r\n',
            b'PUTSCRIPT "bad" {%d+}\r\n' % len(broken) + broken + b"\r\n",
        ],
    )
    assert replies[0].startswith(b"OK") and replies[1].startswith(b"OK"), replies
    assert replies[2].startswith(b"NO"), replies
    assert lmtp(dovecot, [user], message("[lists] weekly digest")) == {}
    assert lmtp(dovecot, [user], message("hello carol")) == {}
    lists = new_messages(maildir(dovecot, user, "Lists"))
    inbox = new_messages(maildir(dovecot, user))
    assert len(lists) == 1 and "Subject: [lists] weekly digest" in lists[0], (lists, inbox)
    assert len(inbox) == 1 and "Subject: hello carol" in inbox[0]


@needs_dovecot
def test_delivery_goes_on_without_the_quota_clones_database(dovecot):
    """The quota clone writes to the primary (mx1 in ha). While it can't, Dovecot logs
    the failure and delivers anyway: mx1's outage never stops imap's mail."""
    base, conf = dovecot["base"], dovecot["conf"]
    dict_conf = base / "etc" / "dovecot-dict-quota.conf.ext"
    good = dict_conf.read_text()
    log = base / "dovecot.log"
    seen = len(log.read_text()) if log.exists() else 0

    def reload():
        r = subprocess.run(
            with_vmail_user(base, ["doveadm", "-c", conf, "reload"]), capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 0, r.stderr
        time.sleep(1)  # the master restarts its services in the background

    try:
        dict_conf.write_text(good.replace(f"port={dovecot['layout'].db_port}", "port=1"))
        reload()
        assert lmtp(dovecot, ["bob@example.org"], message("while mx1 is down")) == {}
        subjects = [m for m in new_messages(maildir(dovecot, "bob@example.org")) if "Subject: while mx1 is down" in m]
        assert len(subjects) == 1
        wait(lambda: "quota_clone" in log.read_text()[seen:], "the clone's failure in the log", 15)
    finally:
        dict_conf.write_text(good)
        reload()


@needs_dovecot
def test_redelivered_message_id_is_stored_once(dovecot):
    """mx1 delivers again when an LMTP session ended after Dovecot stored the message but
    before the 250 reached it (a shutdown or kill -9 at the wrong moment): the global
    dedupe script drops the second copy; another Message-ID, or another user, is stored."""
    alice = maildir(dovecot, "alice@example.org")
    before = len(new_messages(alice))
    mid = f"<redelivered-{os.urandom(4).hex()}@outside.example>"
    first = message("delivered twice", Message_ID=mid)
    # Both deliveries are accepted (a 4xx would make mx1 try for ever).
    assert lmtp(dovecot, ["alice@example.org"], first) == {}
    assert lmtp(dovecot, ["alice@example.org"], first) == {}
    assert lmtp(dovecot, ["alice+tag@example.org"], first) == {}
    assert (
        lmtp(
            dovecot,
            ["alice@example.org"],
            message("another one", Message_ID=f"<other-{os.urandom(4).hex()}@outside.example>"),
        )
        == {}
    )
    # No Message-ID: nothing to compare, never dropped.
    assert lmtp(dovecot, ["alice@example.org"], message("no id")) == {}
    assert lmtp(dovecot, ["alice@example.org"], message("no id")) == {}
    got = new_messages(alice)[before:]
    subjects = sorted(line for m in got for line in m.splitlines() if line.startswith("Subject:"))
    assert subjects == ["Subject: another one", "Subject: delivered twice", "Subject: no id", "Subject: no id"]
    # The same message for another user is that user's first copy.
    bob = maildir(dovecot, "bob@example.org")
    n = len(new_messages(bob))
    assert lmtp(dovecot, ["bob@example.org"], first) == {}
    assert len(new_messages(bob)) == n + 1


def lmtp_rcpt(dv, rcpt: str, timeout: float = 90) -> tuple[int, str]:
    """RCPT's answer alone: what mx1's smtpd would get for this recipient."""
    with smtplib.LMTP("127.0.0.1", dv["layout"].lmtp_port, timeout=timeout) as c:
        c.ehlo_or_helo_if_needed()
        c.mail("sender@outside.example")
        code, text = c.rcpt(rcpt)
        return code, text.decode(errors="replace")


@needs_dovecot
def test_lookup_failure_is_a_temporary_failure(dovecot):
    """With PostgreSQL unreachable Dovecot can't know whether a user exists: LMTP must
    answer 4xx, so the sender keeps the message, never 550 `User doesn't exist`."""
    primary = dovecot["primary"]
    assert lmtp_rcpt(dovecot, "carol@example.net")[0] == 250
    primary.stop()
    try:
        t = time.monotonic()
        answers = {r: lmtp_rcpt(dovecot, r) for r in ("carol@example.net", "nobody@example.org")}
        took = time.monotonic() - t
    finally:
        primary.start()
    for rcpt, (code, text) in answers.items():
        assert 400 <= code < 500, f"{rcpt}: {code} {text} with the database down ({took:.0f}s)"
    wait(lambda: lmtp_rcpt(dovecot, "carol@example.net")[0] == 250, "lookups after PostgreSQL is back", 60)
    assert lmtp_rcpt(dovecot, "nobody@example.org")[0] == 550


@needs_dovecot
def test_lookup_while_the_database_comes_back_is_never_unknown(dovecot):
    """The wrong 550 of issue 14. While PostgreSQL is away, the pgsql driver can't escape
    the address (PQescapeStringConn needs a connection: "Could not escape string: Not
    connected to database") and Dovecot 2.3 sends the query with '' in its place. When the
    database is back before that query times out, '' matches nobody, and an existing user
    got `550 5.1.1 User doesn't exist` (IMAP: a failed login instead of a temporary one).
    Both answers must be 4xx or the right one, never a 5xx."""
    primary = dovecot["primary"]
    wait(lambda: lmtp_rcpt(dovecot, "carol@example.net")[0] == 250, "lookups before the test", 90)
    primary.stop()
    try:
        with ThreadPoolExecutor(3) as pool:
            asked = [pool.submit(lmtp_rcpt, dovecot, "carol@example.net") for _ in range(3)]
            time.sleep(3)
            primary.start()
            answers = [f.result() for f in asked]
    finally:
        if primary.proc.poll() is not None:
            primary.start()
    for code, text in answers:
        assert code == 250 or 400 <= code < 500, f"carol: {code} {text} while PostgreSQL came back"
    wait(lambda: lmtp_rcpt(dovecot, "carol@example.net")[0] == 250, "lookups after PostgreSQL is back", 90)


# --------------------------------------------------------------------------- spam learning


@needs_dovecot
@pytest.mark.parametrize("topology", ["ha", "single"])
def test_learning_scripts_compile_and_reach_mx1s_controller(topology, tmp_path):
    """The IMAPSieve scripts compile with the rendered config (sievec, as the deploy step
    runs it), the program asks mx1's controller with the password from its file, and
    only vmail (the IMAP processes) can read that file."""
    ctx = make_context(settings_from(topology=topology))
    host = imap_host(ctx)
    layout = imap.Layout(etc=str(tmp_path), libexec=str(tmp_path / "libexec"))
    conf = tmp_path / "dovecot.conf"
    conf.write_text(imap.dovecot_conf(ctx, host, layout))
    text = subprocess.run(["doveconf", "-n", "-c", conf], capture_output=True, text=True, check=True, timeout=30).stdout
    assert f"imapsieve_mailbox1_before = file:{tmp_path}/sieve/{imap.LEARN_SPAM}" in text
    assert "imapsieve_mailbox2_from = Junk" in text
    assert "imap_quota imap_sieve" in text
    (tmp_path / "sieve").mkdir()
    for name in (imap.LEARN_SPAM, imap.LEARN_HAM):
        script = tmp_path / "sieve" / name
        script.write_text(imap.sieve_before(name))
        r = subprocess.run(["sievec", "-c", conf, script], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    files = {Path(f.path).name: f for f in imap.learn_files(ctx, host)}
    program, pw = files[imap.LEARN_PROGRAM], files["rspamd-learn.password"]
    assert program.path == f"{imap.SIEVE_PIPE_DIR}/{imap.LEARN_PROGRAM}"
    want = "127.0.0.1:11334" if topology == "single" else "10.77.1.11:11334"
    assert f"rspamc -h {want} -P {imap.LEARN_PASSWORD} " in program.content
    assert ctx.secrets.rspamd_controller_password not in program.content
    assert (pw.path, pw.owner, pw.group, pw.mode, pw.secret) == (imap.LEARN_PASSWORD, "root", "vmail", 0o640, True)
    assert pw.content == ctx.secrets.rspamd_controller_password


@needs_dovecot
def test_users_scripts_cannot_pipe(dovecot):
    """vnd.dovecot.pipe is for the global learning scripts only: the real Dovecot refuses
    a user's script that asks for it at upload."""
    piping = b'require ["vnd.dovecot.pipe"];\r\npipe "rspamd-learn" ["spam"];\r\n'
    plain = b'require ["fileinto"];\r\nfileinto "Junk";\r\n'
    replies = managesieve(
        dovecot["layout"].sieve_port,
        "bob@example.org",
        TEST_PASSWORD,
        [
            b'PUTSCRIPT "pipe" {%d+}\r\n' % len(piping) + piping + b"\r\n",
            b'PUTSCRIPT "plain" {%d+}\r\n' % len(plain) + plain + b"\r\n",
        ],
    )
    assert replies[0].startswith(b"NO") and b"pipe" in replies[0], replies
    assert replies[1].startswith(b"OK"), replies


def test_rspamc_only_where_no_rspamd_runs(ctx, single_ctx):
    ha = imap.bundle(ctx, imap_host(ctx)).script
    assert "apt-get" in ha and "systemctl mask --quiet rspamd.service" in ha
    single = imap.bundle(single_ctx, imap_host(single_ctx)).script
    assert "rspamd.service" not in single
