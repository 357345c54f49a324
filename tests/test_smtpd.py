"""OpenSMTPD configs, checked by the real smtpd 7.4: `smtpd -n` for every host, and a
behavioural run of mx1's config against a real PostgreSQL and unbound in a private
network namespace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mailstack import smtpd as mx
from tests.conftest import EXAMPLE_STACK, TEST_PASSWORD, make_context, settings_from
from tests.daemons import postgresql
from tests.daemons.netns import Netns, start_resolver_and_database
from tests.daemons.smtpd import MX2_LISTEN, SMTPD, rcpt_reply, stage, start_mx2, swaks
from tests.daemons.unbound import (
    OUTSIDE_DYN,
    OUTSIDE_LIAR,
    OUTSIDE_LOW,
    OUTSIDE_MEH,
    OUTSIDE_NO_PTR,
    OUTSIDE_OK,
    SINK,
)


def hosts_of(topology):
    ctx = make_context(settings_from(topology=topology))
    return [(topology, h.role) for h in ctx.hosts.values() if mx.runs_smtpd(h)]


@pytest.mark.parametrize("topology,role", hosts_of("ha") + hosts_of("single"))
def test_smtpd_accepts_rendered_config(topology, role, tmp_path):
    ctx = make_context(settings_from(topology=topology))
    conf = stage(ctx, ctx.hosts[role], tmp_path)
    r = subprocess.run([SMTPD, "-n", "-f", conf], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout + r.stderr


def test_smtpd_rejects_broken_config(tmp_path, ctx):
    # Proves the check above can fail: a listener using an undeclared filter.
    conf = stage(ctx, ctx.hosts["mx1"], tmp_path)
    conf.write_text(conf.read_text().replace('filter "inbound" chain', 'filter "other" chain'))
    r = subprocess.run([SMTPD, "-n", "-f", conf], capture_output=True, text=True)
    assert r.returncode != 0


def test_mail_data_never_changes_smtpd_conf():
    base = make_context(settings_from())
    other = make_context(
        settings_from(
            domains=["example.org", "example.com"],
            users=[{"address": "zed@example.com"}],
            aliases=[{"address": "postmaster@example.com", "to": ["zed@example.com"]}],
        )
    )
    for role in ("mx1", "mx2"):
        a, b = mx.bundle(base, base.hosts[role]), mx.bundle(other, other.hosts[role])
        assert a.file(mx.SMTPD_CONF).content == b.file(mx.SMTPD_CONF).content
        assert a.file(mx.TABLE_CONF).content == b.file(mx.TABLE_CONF).content


def test_table_file_is_secret_and_readable_by_smtpd(ctx):
    for role in ("mx1", "mx2"):
        f = mx.bundle(ctx, ctx.hosts[role]).file(mx.TABLE_CONF)
        assert (f.owner, f.group, f.mode, f.secret) == ("root", "opensmtpd", 0o640, True)
        assert ctx.secrets.lookup_password in f.content
        assert "host=127.0.0.1" in f.content  # always the local server or replica
    assert ctx.secrets.lookup_password not in mx.bundle(ctx, ctx.hosts["mx1"]).script


def test_srs_key_only_in_a_root_only_file(ctx, single_ctx):
    """The SRS key reaches mx1 and mx2 (the same key: mx2 accepts the bounces too) only in
    SRS_CONF, root:root 0600, staged from a deploy step; never in smtpd.conf, a step's
    script, another file of any step, or any host's user-data."""
    from mailstack import cloudinit, deploy

    key = ctx.secrets.srs_key
    for c in (ctx, single_ctx):
        for role in ("mx1", "mx2"):
            if role not in c.hosts:
                continue
            b = mx.bundle(c, c.hosts[role])
            f = b.file(mx.SRS_CONF)
            assert (f.owner, f.group, f.mode, f.secret) == ("root", "root", 0o600, True)
            assert f'srs key "{key}"' in f.content.splitlines()
            conf = b.file(mx.SMTPD_CONF).content
            assert key not in conf and key not in b.script
            # The key is read before the action that uses it (smtpd refuses it otherwise).
            assert conf.index(f'include "{mx.SRS_CONF}"') < conf.index(" srs\n")
        for step in deploy.plan(c.settings):
            b = step.render(c)
            assert key not in b.script, step.name
            assert [f.path for f in b.files if key in f.content] in ([], [mx.SRS_CONF]), step.name
        for h in c.hosts.values():
            assert key not in cloudinit.user_data(c.settings, h), h.role


def test_srs_key_must_be_usable():
    """An empty or odd key is a clear error naming it, before anything is rendered."""
    import dataclasses

    base = make_context(settings_from())
    for bad in ("", "short", 'with"quote-and-more'):
        c = dataclasses.replace(base, secrets=dataclasses.replace(base.secrets, srs_key=bad))
        with pytest.raises(ValueError, match="srs_key"):
            mx.bundle(c, c.hosts["mx1"])


def test_relay_targets(ctx, single_ctx):
    mx1 = mx.smtpd_conf(ctx, ctx.hosts["mx1"])
    mx2 = mx.smtpd_conf(ctx, ctx.hosts["mx2"])
    single = mx.smtpd_conf(single_ctx, single_ctx.hosts["mx1"])
    assert f'lmtp "{ctx.hosts["imap"].private_ip}:24"' in mx1
    assert 'lmtp "127.0.0.1:24"' in single
    assert f"smtp://{ctx.hosts['mx1'].private_ip}:{mx.RELAY_PORT}" in mx2
    # mx2 answers for existing recipients only, and never delivers or takes submissions.
    assert "rcpt-to <pgsql>" in mx2 and "lmtp" not in mx2 and "auth" not in mx2
    assert f"port {mx.RELAY_PORT}" not in single


def test_flush_timer_only_on_backup_mx(ctx):
    assert mx.FLUSH_TIMER in {f.path for f in mx.bundle(ctx, ctx.hosts["mx2"]).files}
    assert mx.FLUSH_TIMER not in {f.path for f in mx.bundle(ctx, ctx.hosts["mx1"]).files}
    service = mx.bundle(ctx, ctx.hosts["mx2"]).file(mx.FLUSH_SERVICE).content
    assert "smtpctl schedule all" in service


# --------------------------------------------------------------------------- behaviour

EXAMPLE_ALIASES = yaml.safe_load(EXAMPLE_STACK.read_text())["config"]["mailstack:aliases"]
# The role addresses of the second domain are left to the stack (settings.role_aliases):
# postmaster@ and abuse@ of example.net must still be accepted, by mx1 and mx2.
MX_ALIASES = [
    a for a in EXAMPLE_ALIASES if not a["address"].endswith("@example.net") or a["address"] == "team@example.net"
]
# An alias that forwards outside as well as inside, as people keep for a family address.
FORWARD_ALIAS = {"address": "family@example.org", "to": ["alice@example.org", "grandma@elsewhere.test"]}


@pytest.fixture(scope="module")
def mx1_running():
    """mx1's rendered smtpd.conf (HA) with PostgreSQL holding the example stack's
    accounts. Without the rspamd filter: rspamd needs ~20 s to start (see test_rspamd)."""
    ctx = make_context(settings_from(aliases=[*MX_ALIASES, FORWARD_ALIAS]))
    assert "postmaster@example.net" not in {a["address"] for a in MX_ALIASES}
    mx1 = ctx.hosts["mx1"]
    root = Path(tempfile.mkdtemp(prefix=f"mailstack-mx-{uuid.uuid4().hex[:8]}-"))
    root.chmod(0o755)
    ns = None
    try:
        conf = stage(ctx, mx1, root, rspamd=False, bind_ip=mx1.private_ip)
        # mx2's smtpd beside it, on the same database: its private address is a client
        # here (the relay-port tests), so it listens on its public one.
        mx2_conf = stage(ctx, ctx.hosts["mx2"], root / "mx2", rspamd=False, bind_ip=MX2_LISTEN)
        ns = Netns(
            root,
            mx1.private_ip,
            [
                ctx.hosts["mx2"].private_ip,
                ctx.hosts["imap"].private_ip,
                OUTSIDE_OK,
                OUTSIDE_NO_PTR,
                OUTSIDE_DYN,
                OUTSIDE_LIAR,
                OUTSIDE_LOW,
                OUTSIDE_MEH,
                SINK,
            ],
            more_server_ips=(MX2_LISTEN,),
        )
        # Kept on the namespace for the test that stops PostgreSQL (the module's last).
        ns.daemons = start_resolver_and_database(ns, ctx, root)
        ns.root = root
        smtpd = ns.start(SMTPD, "-d", "-f", conf, log=root / "smtpd.log")
        ns.wait_port(mx1.private_ip, 25, smtpd, root / "smtpd.log")
        ns.wait_port(mx1.private_ip, mx.RELAY_PORT, smtpd, root / "smtpd.log")
        start_mx2(ns, mx2_conf, root)
        # elsewhere.test's MX, in the client namespace: what smtpd relays out lands here.
        ns.sink_log = root / "sink.jsonl"
        sink = subprocess.Popen(
            ns.cmd(sys.executable, "-c", SINK_SERVER, SINK, ns.sink_log, ns=ns.client),
            stdout=subprocess.DEVNULL,
            stderr=open(root / "sink.err", "w"),
            start_new_session=True,
        )
        ns.procs.append(sink)
        yield ctx, ns
    finally:
        if ns:
            ns.close()
        shutil.rmtree(root, ignore_errors=True)


def test_inbound_accepts_users_and_aliases_only(mx1_running):
    ctx, ns = mx1_running
    ip = ctx.hosts["mx1"].private_ip
    for rcpt in (
        "alice@example.org",
        "postmaster@example.org",
        "team@example.net",
        "carol@example.net",
        FORWARD_ALIAS["address"],
    ):
        out = swaks(
            ns, "--server", ip, "--li", OUTSIDE_OK, "--from", "x@good.test", "--to", rcpt, "--quit-after", "RCPT"
        )
        assert rcpt_reply(out).strip().startswith("<-  250"), out
    for rcpt in ("nobody@example.org", "alice@example.com"):
        out = swaks(
            ns, "--server", ip, "--li", OUTSIDE_OK, "--from", "x@good.test", "--to", rcpt, "--quit-after", "RCPT"
        )
        assert re.match(r"^<\*\* +5\d\d", rcpt_reply(out).strip()), out


SMTP_CLIENT = r"""
import json, smtplib, ssl, sys
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
try:
    cls = smtplib.SMTP_SSL if a["mode"] == "smtps" else smtplib.SMTP
    kw = {"context": ctx} if a["mode"] == "smtps" else {}
    s = cls(a["server"], a["port"], source_address=(a["src"], 0), timeout=15, **kw)
    s.ehlo("client.test")
    out["features"] = sorted(s.esmtp_features)
    if a["mode"] == "starttls":
        s.starttls(context=ctx)
        s.ehlo("client.test")
        out["tls_features"] = sorted(s.esmtp_features)
    if a.get("user"):
        try:
            out["auth"] = s.login(a["user"], a["password"])[0]
        except smtplib.SMTPAuthenticationError as e:
            out["auth"] = e.smtp_code
    out["mail"] = s.mail(a["from"])[0]
    out["rcpt"] = s.rcpt(a["to"])
    out["rcpt"] = [out["rcpt"][0], out["rcpt"][1].decode()]
    if a.get("data"):
        out["data"] = s.data(a["data"])[0]
    s.quit()
except smtplib.SMTPServerDisconnected as e:
    out["disconnected"] = str(e)
except smtplib.SMTPResponseException as e:
    out["error"] = [e.smtp_code, e.smtp_error.decode()]
print(json.dumps(out))
"""


def smtp(ns, server, port, src, mode="plain", **kw) -> dict:
    """One SMTP session from the client namespace (Python's smtplib: real TLS)."""
    args = dict(server=server, port=port, src=src, mode=mode, **kw)
    args.setdefault("from", "x@good.test")
    r = ns.run(sys.executable, "-c", SMTP_CLIENT, json.dumps(args), client=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


RECIPIENTS = {
    # address: accepted at RCPT by both MX hosts?
    "alice@example.org": True,
    "alice+lists@example.org": True,
    "Alice+Lists@Example.org": True,
    "alice+a+b@example.org": True,
    "team+x@example.net": True,
    "postmaster@example.org": True,
    "family+x@example.org": True,
    # Role addresses no alias of the settings names: created by the stack.
    "postmaster@example.net": True,
    "abuse@example.net": True,
    "abuse@example.org": True,
    "nobody@example.org": False,
    "nobody+alice@example.org": False,
    "alice@example.com": False,
    "alice+@example.org": True,
    "alice+@other.example.org": False,
}


def test_mx1_and_mx2_decide_recipients_alike(mx1_running):
    """One recipient decision for both MX hosts: sub-addresses of users and aliases are
    accepted on mx2 exactly as on mx1 (mail to them would otherwise bounce while mx1 is
    down), unknown ones get 5xx at RCPT on both (no backscatter)."""
    ctx, ns = mx1_running
    for rcpt, ok in RECIPIENTS.items():
        for server in (ctx.hosts["mx1"].private_ip, MX2_LISTEN):
            out = swaks(
                ns,
                "--server",
                server,
                "--li",
                OUTSIDE_OK,
                "--from",
                "x@good.test",
                "--to",
                rcpt,
                "--quit-after",
                "RCPT",
            )
            reply = rcpt_reply(out).strip()
            assert reply.startswith("<-  250") if ok else re.match(r"^<\*\* +5\d\d", reply), (server, rcpt, out)


def test_no_open_relay(mx1_running):
    ctx, ns = mx1_running
    ip = ctx.hosts["mx1"].private_ip
    for port, mode in ((25, "plain"), (25, "starttls"), (587, "starttls")):
        r = smtp(ns, ip, port, OUTSIDE_OK, mode, **{"from": "alice@example.org"}, to="someone@elsewhere.test")
        # Port 25 refuses the recipient; 587 refuses MAIL until AUTH.
        assert (r["mail"] == 250 and 500 <= r["rcpt"][0] < 600) or r["mail"] == 530, r
        assert port == 587 or r["mail"] == 250, r


def test_connect_filters(mx1_running):
    ctx, ns = mx1_running
    ip = ctx.hosts["mx1"].private_ip
    out = swaks(ns, "--server", ip, "--li", OUTSIDE_NO_PTR, "--to", "alice@example.org", "--quit-after", "RCPT")
    assert "550 5.7.25 Client host has no reverse DNS" in out, out
    out = swaks(ns, "--server", ip, "--li", OUTSIDE_DYN, "--to", "alice@example.org", "--quit-after", "RCPT")
    assert "dynamic address" in out, out
    # A PTR that doesn't resolve back to the client: forward-confirmed rDNS fails.
    out = swaks(ns, "--server", ip, "--li", OUTSIDE_LIAR, "--to", "alice@example.org", "--quit-after", "RCPT")
    assert "550 5.7.25 Client host reverse DNS does not resolve back to its address" in out, out
    # A SenderScore below -blockBelow: refused before any command.
    out = swaks(ns, "--server", ip, "--li", OUTSIDE_LOW, "--to", "alice@example.org", "--quit-after", "RCPT")
    assert "550 your IP reputation is too low for this MX" in out, out


def _queued(ns: Netns, subject: str) -> str:
    """The queued message (smtpd keeps it: LMTP on imap's address isn't there) whose
    Subject is `subject`, as smtpd stored it."""

    def find():
        queue = ns.run("smtpctl", "show", "queue").stdout.splitlines()
        for evp in (line.split("|")[0] for line in queue if line):
            text = ns.run("smtpctl", "show", "message", evp).stdout
            if f"Subject: {subject}" in text:
                return text
        return None

    for _ in range(100):
        text = find()
        if text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"no queued message with Subject: {subject}")


def test_senderscore_junks_a_poor_score(mx1_running):
    """Between -blockBelow and -junkBelow the mail is taken, marked `X-Spam: Yes` (Dovecot
    files it into Junk), and the session slowed (not timed here: no timing assertions)."""
    ctx, ns = mx1_running
    for src, subject in ((OUTSIDE_MEH, "poor reputation"), (OUTSIDE_OK, "no reputation")):
        out = swaks(
            ns,
            "--server",
            ctx.hosts["mx1"].private_ip,
            "--li",
            src,
            "--from",
            "x@good.test",
            "--to",
            "alice@example.org",
            "--header",
            f"Subject: {subject}",
        )
        assert "<-  250 2.0.0" in out.split("DATA", 1)[-1], out
    assert "X-Spam: Yes" in _queued(ns, "poor reputation")  # what the Sieve script files into Junk
    assert "X-Spam" not in _queued(ns, "no reputation")


def test_submission_masks_the_client_address(mx1_running):
    """mask-src: mail submitted on 587 and 465 doesn't carry the user's address (home IP)
    in its Received header; mail on port 25 does."""
    ctx, ns = mx1_running
    ip = ctx.hosts["mx1"].private_ip
    for port, mode in ((587, "starttls"), (465, "smtps")):
        subject = f"masked {port}"
        r = smtp(
            ns,
            ip,
            port,
            OUTSIDE_NO_PTR,
            mode,
            user="alice@example.org",
            password=TEST_PASSWORD,
            to="bob@example.org",
            data=f"Subject: {subject}\r\n\r\nhello\r\n",
            **{"from": "alice@example.org"},
        )
        assert r.get("data") == 250, r
        text = _queued(ns, subject)
        assert "Received:" in text and OUTSIDE_NO_PTR not in text, text
    out = swaks(
        ns,
        "--server",
        ip,
        "--li",
        OUTSIDE_OK,
        "--from",
        "x@good.test",
        "--to",
        "bob@example.org",
        "--header",
        "Subject: unmasked 25",
    )
    assert "<-  250 2.0.0" in out.split("DATA", 1)[-1], out
    assert OUTSIDE_OK in _queued(ns, "unmasked 25")


def test_submission_requires_tls_auth_and_own_sender(mx1_running):
    ctx, ns = mx1_running
    ip = ctx.hosts["mx1"].private_ip
    auth = dict(user="alice@example.org", password=TEST_PASSWORD)
    r = smtp(
        ns, ip, 587, OUTSIDE_NO_PTR, "starttls", **{"from": "alice@example.org"}, to="someone@elsewhere.test", **auth
    )
    # No AUTH before STARTTLS; after it, a login from the database submits anywhere.
    assert "auth" not in r["features"] and "starttls" in r["features"], r
    assert "auth" in r["tls_features"] and r["auth"] == 235, r
    assert r["rcpt"][0] == 250, r
    r = smtp(ns, ip, 465, OUTSIDE_NO_PTR, "smtps", **{"from": "alice@example.org"}, to="someone@elsewhere.test", **auth)
    assert r["auth"] == 235 and r["rcpt"][0] == 250, r
    # Only as herself (or her aliases), and only with the right password.
    r = smtp(
        ns, ip, 587, OUTSIDE_NO_PTR, "starttls", **{"from": "bob@example.org"}, to="someone@elsewhere.test", **auth
    )
    assert r["auth"] == 235 and r["mail"] == 530, r
    r = smtp(ns, ip, 587, OUTSIDE_NO_PTR, "starttls", to="x@elsewhere.test", user="alice@example.org", password="wrong")
    assert r["auth"] == 535, r
    # Without AUTH, submission accepts nothing.
    r = smtp(ns, ip, 587, OUTSIDE_NO_PTR, "starttls", **{"from": "alice@example.org"}, to="bob@example.org")
    assert r["mail"] == 530 and r["rcpt"][0] >= 500, r


def _rcpt(ns, server: str, src: str, to: str, *more: str) -> tuple[str, str]:
    """RCPT TO `to` on server from the client address src (then QUIT); more: other swaks
    options. The reply to RCPT and the whole transcript."""
    out = swaks(ns, "--server", server, *more, "--li", src, "--to", to, "--quit-after", "RCPT")
    return rcpt_reply(out).strip(), out


def test_internal_port_only_for_our_hosts(mx1_running):
    ctx, ns = mx1_running
    ip = ctx.hosts["mx1"].private_ip
    mx2 = ctx.hosts["mx2"].private_ip
    relay = ("--port", str(mx.RELAY_PORT))
    # mx2's private address has no PTR, yet its backup queue is taken for our domains...
    reply, out = _rcpt(ns, ip, mx2, "alice@example.org", *relay)
    assert reply.startswith("<-  250"), out
    # Aliases too, including one that forwards outside, from mx2's queue and from imap's
    # Sieve redirects: smtpd matches what an alias expands to as mail "from local", not
    # from the peer (this bounced mail once).
    for peer in (mx2, ctx.hosts["imap"].private_ip):
        for rcpt in ("team@example.net", FORWARD_ALIAS["address"]):
            reply, out = _rcpt(ns, ip, peer, rcpt, *relay)
            assert reply.startswith("<-  250"), (peer, rcpt, out)
    reply, out = _rcpt(ns, ip, mx2, "someone@elsewhere.test", *relay)
    assert re.match(r"^<\*\* +5\d\d", reply), out
    # ...and anyone else reaching that port gets nothing.
    reply, out = _rcpt(ns, ip, OUTSIDE_OK, "alice@example.org", *relay)
    assert re.match(r"^<\*\* +5\d\d", reply), out


# A receiving server for elsewhere.test (test harness, not part of the stack): one JSON
# line per message with the envelope smtpd sent, so the SRS rewrite on the wire is seen.
SINK_SERVER = r"""
import json, socketserver, sys

class Session(socketserver.StreamRequestHandler):
    def handle(self):
        say = lambda line: (self.wfile.write(line.encode() + b"\r\n"), self.wfile.flush())
        say("220 sink.test ESMTP")
        env = {"mail": None, "rcpt": []}
        for raw in self.rfile:
            line = raw.decode(errors="replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                say("250 sink.test")
            elif verb == "MAIL":
                env = {"mail": line.split(":", 1)[1].strip().split()[0].strip("<>"), "rcpt": []}
                say("250 ok")
            elif verb == "RCPT":
                env["rcpt"].append(line.split(":", 1)[1].strip().split()[0].strip("<>"))
                say("250 ok")
            elif verb == "DATA":
                say("354 go on")
                body = []
                for raw in self.rfile:
                    if raw.rstrip(b"\r\n") == b".":
                        break
                    body.append(raw.decode(errors="replace"))
                env["data"] = "".join(body)
                with open(sys.argv[2], "a") as f:
                    f.write(json.dumps(env) + "\n")
                say("250 stored")
            elif verb == "QUIT":
                say("221 bye")
                return
            else:
                say("250 ok")

socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], 25), Session).serve_forever()
"""


def _sunk(ns, marker: str, timeout: float = 60) -> dict:
    """The message the sink received whose data holds `marker`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ns.sink_log.exists():
            for line in ns.sink_log.read_text().splitlines():
                env = json.loads(line)
                if marker in env.get("data", ""):
                    return env
        ns.run("smtpctl", "schedule", "all")
        time.sleep(1)
    raise AssertionError(f"nothing with {marker!r} reached elsewhere.test's MX")


SRS_ADDRESS = re.compile(r"^SRS0=[A-Za-z0-9_-]{4}=[A-Z2-7]{2}=(?P<domain>[^=]+)=(?P<user>[^@]+)@(?P<ours>.+)$")


def test_forwarded_mail_leaves_with_an_srs_sender_and_its_bounce_comes_back(mx1_running):
    """Forwarding (issue 12): mx1's real smtpd sends a forwarded copy out with an SRS0
    envelope sender at the alias's domain (covered by our SPF), keeps the sender of mail a
    user sends; a bounce (null sender) to that SRS address is accepted by mx1 and by mx2
    (same key) and goes back to the original sender; a forged or reused one is refused."""
    ctx, ns = mx1_running
    mx1 = ctx.hosts["mx1"].private_ip

    def send(server, sender, rcpt, subject, port=25, src=OUTSIDE_OK):
        return swaks(
            ns,
            "--server",
            server,
            "--port",
            str(port),
            "--li",
            src,
            "--from",
            sender,
            "--to",
            rcpt,
            "--header",
            f"Subject: {subject}",
        )

    out = send(mx1, "someone@elsewhere.test", FORWARD_ALIAS["address"], "srs forward 1")
    assert "<-  250 2.0.0" in out.split("DATA", 1)[-1], out
    env = _sunk(ns, "srs forward 1")
    m = SRS_ADDRESS.match(env["mail"])
    assert m and (m["domain"], m["user"], m["ours"]) == ("elsewhere.test", "someone", "example.org"), env
    assert env["rcpt"] == ["grandma@elsewhere.test"], env
    srs = env["mail"]

    # A user's own mail keeps its sender: only forwarded copies are rewritten.
    r = smtp(
        ns,
        mx1,
        587,
        OUTSIDE_NO_PTR,
        "starttls",
        user="alice@example.org",
        password=TEST_PASSWORD,
        to="friend@elsewhere.test",
        data="Subject: srs own mail\r\n\r\nhi\r\n",
        **{"from": "alice@example.org"},
    )
    assert r.get("data") == 250, r
    assert _sunk(ns, "srs own mail")["mail"] == "alice@example.org"

    # The bounce: null sender to the SRS address, on mx1 and on mx2 (which knows the key).
    for server in (mx1, MX2_LISTEN):
        reply = rcpt_reply(
            swaks(ns, "--server", server, "--li", OUTSIDE_OK, "--from", "<>", "--to", srs, "--quit-after", "RCPT")
        ).strip()
        assert reply.startswith("<-  250"), (server, reply)
    out = send(mx1, "<>", srs, "srs bounce 1")
    assert "<-  250 2.0.0" in out.split("DATA", 1)[-1], out
    back = _sunk(ns, "srs bounce 1")
    assert (back["mail"], back["rcpt"]) == ("", ["someone@elsewhere.test"]), back

    # A local original sender gets the bounce in her mailbox (LMTP: queued for imap here).
    out = send(mx1, "alice@example.org", FORWARD_ALIAS["address"], "srs forward 2")
    local_srs = _sunk(ns, "srs forward 2")["mail"]
    assert SRS_ADDRESS.match(local_srs)["user"] == "alice", local_srs
    out = send(mx1, "<>", local_srs, "srs bounce 2")
    assert "<-  250 2.0.0" in out.split("DATA", 1)[-1], out
    # smtpctl's envelope line: id|family|type|flags|sender|rcpt|dest|...
    queue = [line.split("|") for line in ns.run("smtpctl", "show", "queue").stdout.splitlines()]
    assert [f[2:7] for f in queue if f[5:6] == [local_srs]] == [
        ["mda", "internal", "@", local_srs, "alice@example.org"]
    ], queue
    # mx2 takes it too (its `primary` action hands it to mx1 for alice's mailbox).
    reply = rcpt_reply(
        swaks(ns, "--server", MX2_LISTEN, "--li", OUTSIDE_OK, "--from", "<>", "--to", local_srs, "--quit-after", "RCPT")
    ).strip()
    assert reply.startswith("<-  250"), reply

    # A forged hash, or the SRS address used as a sender-bearing relay: no such user (5xx).
    user, domain = srs.split("@")
    forged = f"SRS0={'AAAA' if user[5:9] != 'AAAA' else 'BBBB'}{user[9:]}@{domain}"
    for server in (mx1, MX2_LISTEN):
        for sender, rcpt in (("<>", forged), ("x@good.test", srs)):
            reply = rcpt_reply(
                swaks(
                    ns, "--server", server, "--li", OUTSIDE_OK, "--from", sender, "--to", rcpt, "--quit-after", "RCPT"
                )
            ).strip()
            assert re.match(r"^<\*\* +5\d\d", reply), (server, sender, rcpt, reply)


REPO = Path(__file__).resolve().parent.parent


def _tls_scan(ns, ip: str, port: int, starttls: bool, name: str) -> dict:
    """sslyze from the client namespace (lab/tls_scan.py), as whichever source address the
    route to `ip` names."""
    r = ns.run(
        sys.executable,
        "-m",
        "lab.tls_scan",
        ip,
        port,
        "--name",
        name,
        *(["--starttls", "smtp"] if starttls else []),
        client=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_tls_profiles_of_every_listener(mx1_running):
    """sslyze against the real smtpd: submission (587 STARTTLS, 465) and the relay port
    offer only Mozilla's intermediate profile; port 25 keeps older strong suites for
    opportunistic senders but nothing before TLS 1.2 (docs/hardening.md)."""
    from lab import tls_scan

    ctx, ns = mx1_running
    ip, fqdn, smtp_fqdn = ctx.hosts["mx1"].private_ip, ctx.hosts["mx1"].fqdn, ctx.settings.fqdn("smtp")
    for port, starttls, name in ((587, True, smtp_fqdn), (465, False, smtp_fqdn), (mx.RELAY_PORT, True, fqdn)):
        accepted = _tls_scan(ns, ip, port, starttls, name)
        assert tls_scan.problems(accepted) == [], (port, accepted)
    # Port 25's connect filters want a client with forward-confirmed reverse DNS.
    route = ["ip", "route", "replace", f"{ip}/32", "dev", "vc"]
    assert ns.run(*route, "src", OUTSIDE_OK, client=True).returncode == 0
    try:
        accepted = _tls_scan(ns, ip, 25, True, fqdn)
    finally:
        ns.run(*route, client=True)
    assert tls_scan.problems(accepted, wide=True) == [], accepted
    assert set(tls_scan.mozilla_intermediate()["ciphers"]["iana"]) & set(accepted["TLSv1.2"])


def test_smtpd_waits_for_its_database_and_comes_back(ctx):
    """At boot smtpd must start after the local PostgreSQL (table-postgres exits, taking
    smtpd with it, if the database isn't up), and return if the database restarts."""
    import configparser

    from mailstack import smtpd as mx

    for role in ("mx1", "mx2"):
        b = mx.bundle(ctx, ctx.hosts[role])
        unit = configparser.ConfigParser(strict=False)
        unit.read_string(b.file(mx.UNIT_DROPIN).content)
        assert "postgresql@15-main.service" in unit["Unit"]["After"].split()
        assert "postgresql@15-main.service" in unit["Unit"]["Wants"].split()
        assert "Restart" not in unit["Service"]  # mailstack-supervision.conf (test_supervision)
        # Foreground, so a restart stops the real main process.
        assert unit["Service"]["Type"] == "simple"
        assert unit["Service"]["ExecStart"].split("\n")[-1].strip() == "/usr/sbin/smtpd -F"
        assert f"install_file {mx.UNIT_DROPIN}" in b.script and "daemon-reload" in b.script


def _guard(ctx, tmp_path, lines, *options):
    """Runs the rendered filter guard for real, with `cat` standing in for the filter."""
    script = tmp_path / "guard"
    script.write_text(mx.bundle(ctx, ctx.hosts["mx1"]).file(mx.FILTER_GUARD).content)
    r = subprocess.run(
        [sys.executable, script, *options, "cat"],
        input="\n".join(lines).encode() + b"\n",
        capture_output=True,
        timeout=10,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.decode("latin-1").splitlines()


def test_filters_run_behind_the_guard(ctx):
    b = mx.bundle(ctx, ctx.hosts["mx1"])
    assert b.file(mx.FILTER_GUARD).mode == 0o755
    conf = b.file(mx.SMTPD_CONF).content
    assert (
        f'filter "rspamd" proc-exec "{mx.FILTER_GUARD} --swap-login-fields '
        f'--strip-headers {ctx.settings.host_domain} {mx.FILTER_DIR}/filter-rspamd"'
    ) in conf
    assert f'filter "senderscore" proc-exec "{mx.FILTER_GUARD} {mx.FILTER_DIR}/filter-senderscore ' in conf


def test_guard_hands_the_login_to_filter_rspamd(ctx, tmp_path):
    """OpenSMTPD 7.4 reports link-auth as result|user (captured in the lab); filter-rspamd
    0.1.7 reads user|result. With --swap-login-fields the guard swaps exactly those two."""
    lines = [
        "report|0.7|1795630616.532135|smtp-in|link-auth|db16fae9bf8806b2|pass|alice@example.org",
        "report|0.7|1795630616.532135|smtp-in|link-auth|db16fae9bf8806b2|fail|mallory@example.org",
        "report|0.7|1795630616.479446|smtp-in|link-connect|db16fae9bf8806b2|mx.example|pass|198.51.100.25:46395|0.0.0.0:587",
        "filter|0.7|1795630616.6|smtp-in|data-line|db16fae9bf8806b2|tok|link-auth|x|pass|y",
    ]
    assert _guard(ctx, tmp_path, lines, "--swap-login-fields") == [
        "report|0.7|1795630616.532135|smtp-in|link-auth|db16fae9bf8806b2|alice@example.org|pass",
        "report|0.7|1795630616.532135|smtp-in|link-auth|db16fae9bf8806b2|mallory@example.org|fail",
        lines[2],
        lines[3],
    ]
    assert _guard(ctx, tmp_path, lines[:1]) == lines[:1]


def test_guard_keeps_strangers_fields_in_their_place(ctx, tmp_path):
    """A '|' in a failed login's user name, a HELO name or a PTR name must not add
    fields (the filters exit on that); a data line over Go's 64 KiB line is cut."""
    sid = "report|0.7|1.0|smtp-in"
    out = _guard(
        ctx,
        tmp_path,
        [
            f"{sid}|link-auth|s1|fail|a|b|c@x",
            f"{sid}|link-identify|s1|EHLO|evil|host",
            f"{sid}|link-connect|s1|a|b.evil.test|pass|10.0.0.1:1|10.0.0.2:25",
            "filter|0.7|1.0|smtp-in|data-line|s1|tok|" + "x" * 65520,
            "filter|0.7|1.0|smtp-in|data-line|s1|tok|a|b\x00c",
        ],
        "--swap-login-fields",
    )
    assert out[:3] == [
        f"{sid}|link-auth|s1|a%7Cb%7Cc@x|fail",
        f"{sid}|link-identify|s1|EHLO|evil%7Chost",
        f"{sid}|link-connect|s1|a%7Cb.evil.test|pass|10.0.0.1:1|10.0.0.2:25",
    ]
    pieces = out[3:-1]
    assert len(pieces) == 2 and all(len(p) < 64 * 1024 for p in pieces)
    assert "".join(p.rsplit("|", 1)[1] for p in pieces) == "x" * 65520
    assert out[-1] == "filter|0.7|1.0|smtp-in|data-line|s1|tok|a|b\x00c"


def test_guard_strips_forged_verdict_headers(ctx, tmp_path):
    """--strip-headers: X-Spam* and Authentication-Results claiming our domain go from the
    header section (any case, folded or not), with their continuation lines; others stay,
    and the body is never touched. Each message of a session starts a header section."""
    p = "filter|0.7|1.0|smtp-in|data-line|s1|tok|"
    msg = [
        "Received: from x",
        "X-Spam-Status: No,",
        "  score=-100",
        "Authentication-Results:",
        "\tmx1.example.org; dkim=pass",
        "Authentication-Results: relay.other.test; spf=pass",
        "aUTHENTICATION-results: (v1) Example.org. ; dkim=pass",
        "Authentication-Results: evilexample.org; spf=pass",
        "x-spam: no",
        "Subject: hi",
        "",
        "X-Spam: a body line",
        ".",
    ]
    kept = [
        "Received: from x",
        "Authentication-Results: relay.other.test; spf=pass",
        "Authentication-Results: evilexample.org; spf=pass",
        "Subject: hi",
        "",
        "X-Spam: a body line",
        ".",
    ]
    out = _guard(ctx, tmp_path, [p + x for x in msg + msg], "--swap-login-fields", "--strip-headers", "example.org")
    assert out == [p + x for x in kept + kept]
    assert _guard(ctx, tmp_path, [p + x for x in msg]) == [p + x for x in msg]  # without the option


def test_smtpd_stops_before_dovecot_on_one_host(ctx, single_ctx):
    """systemd stops in the reverse order of After=: on one host smtpd must end its LMTP
    sessions before Dovecot goes, or a message Dovecot stored is delivered again."""
    import configparser

    from mailstack import smtpd as mx

    def after(c, role):
        unit = configparser.ConfigParser(strict=False)
        unit.read_string(mx.bundle(c, c.hosts[role]).file(mx.UNIT_DROPIN).content)
        return unit["Unit"]["After"].split()

    assert "dovecot.service" in after(single_ctx, "mx1")
    # Across hosts there is no order to give: mx1 has no Dovecot.
    assert "dovecot.service" not in after(ctx, "mx1")


def test_rcpt_is_451_while_the_database_is_down(mx1_running):
    """Runs last in this module: it stops the fixture's PostgreSQL. Without the database
    smtpd can't know a recipient, so RCPT must be a temporary failure (the sender keeps
    the mail), never 550; smtpd stays up and answers 250 again once the database is back."""
    ctx, ns = mx1_running
    ip = ctx.hosts["mx1"].private_ip

    def probe(rcpt):
        return _rcpt(ns, ip, OUTSIDE_OK, rcpt, "--from", "x@good.test")[0]

    assert probe("alice@example.org").startswith("<-  250")
    postgresql.stop_in_netns(ns.root)
    try:
        for rcpt in ("alice@example.org", "nobody@example.org"):
            reply = probe(rcpt)
            assert re.search(r"\b451\b", reply), f"{rcpt} with the database down: {reply}"
    finally:
        postgresql.restart_in_netns(ns, ns.root)
    wait_for = time.monotonic() + 60
    while not probe("alice@example.org").startswith("<-  250"):
        assert time.monotonic() < wait_for, "smtpd did not answer 250 again after the database came back"
        time.sleep(2)
    assert re.match(r"^<\*\* +550", probe("nobody@example.org"))
