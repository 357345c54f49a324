"""fail2ban against the real daemons (mailstack/fail2ban.py, docs/hardening.md).

The rendered jails pass `fail2ban-client -t` with Debian's packaged configuration; then,
in network namespaces the test creates, the single host's real smtpd (submission on 465
and 587) and real Dovecot (IMAPS 993, ManageSieve 4190) run on a real PostgreSQL, a real
fail2ban-server reads their logs with the rendered jails and filters, and bans through
its nftables action into the namespace's own nftables: repeated failed logins from one
address (IPv4 and IPv6) get it blocked on those ports, while a good login from another
address still works.

On the servers fail2ban reads the journal; here there is none, so the test points the
same jails at log files (backend polling). smtpd's debug output carries no time stamp,
so its lines are written the way the journal hands them to fail2ban
("<time> <host> smtpd[<pid>]: <message>").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mailstack import dovecot, fail2ban
from mailstack import smtpd as mx
from tests.conftest import TEST_PASSWORD, make_context, settings_from
from tests.daemons.dovecot import install as install_dovecot
from tests.daemons.dovecot import layout_under, make_dirs
from tests.daemons.netns import Netns, start_resolver_and_database
from tests.daemons.smtpd import SMTPD, stage
from tests.daemons.unbound import OUTSIDE_NO_PTR, OUTSIDE_OK

pytestmark = pytest.mark.timeout(600)

ATTACKER6 = "fd00:99::6"
GOOD6 = "fd00:99::5"
SERVER6 = "fd00:77::11"
ADMIN = "203.0.113.9"  # inside the test stack's admin.sshCidrs
FAILURES = 3  # the smallest loginFailures the settings allow


def _confdir(ctx, host, root: Path) -> Path:
    """Debian's /etc/fail2ban with the rendered files, as the deploy step checks it."""
    d = root / "fail2ban"
    shutil.copytree("/etc/fail2ban", d)
    b = fail2ban.bundle(ctx, host)
    for f in b.files:
        (d / Path(f.path).relative_to("/etc/fail2ban")).write_text(f.content)
    return d


@pytest.mark.parametrize("topology,role", [("ha", "mx1"), ("ha", "imap"), ("single", "mx1")])
def test_rendered_jails_pass_fail2ban_check(topology, role, tmp_path):
    ctx = make_context(settings_from(topology=topology))
    d = _confdir(ctx, ctx.hosts[role], tmp_path)
    r = subprocess.run(["fail2ban-client", "-c", d, "-d"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    jails = {j.name: j for j in fail2ban.jails(ctx.hosts[role])}
    for name, j in jails.items():
        assert f"['add', '{name}', 'systemd']" in r.stdout  # the journal
        assert f"['port', '{','.join(map(str, j.ports))}']" in r.stdout
    # The journal units the filters read are the daemons' own.
    if "mailstack-smtpd" in jails:
        assert f"'addjournalmatch', '_SYSTEMD_UNIT={mx.UNIT}'" in r.stdout
        assert sorted(jails["mailstack-smtpd"].ports) == [465, 587]
    if "mailstack-dovecot" in jails:
        assert f"'addjournalmatch', '_SYSTEMD_UNIT={dovecot.UNIT}'" in r.stdout
        assert sorted(jails["mailstack-dovecot"].ports) == [993, 4190]
    assert "'sshd'" not in r.stdout


def test_fail2ban_check_catches_a_broken_filter(tmp_path):
    """The deploy step's check (fail2ban-regex compiles the filter; -t does not)."""
    ctx = make_context(settings_from(topology="single"))
    d = _confdir(ctx, ctx.hosts["mx1"], tmp_path)
    f = d / "filter.d" / Path(fail2ban.SMTPD_FILTER).name
    check = ["fail2ban-regex", "-c", d, "mailstack probe", f]
    assert 'fail2ban-regex -c "$f2b_check" "mailstack probe"' in fail2ban.bundle(ctx, ctx.hosts["mx1"]).script
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0
    f.write_text(f.read_text().replace("failregex = ^", "failregex = ^(", 1))
    assert subprocess.run(check, capture_output=True, timeout=60).returncode != 0


def test_never_banned(ctx):
    ips = fail2ban.ignore_ips(ctx)
    for role, a in ctx.addresses.items():
        assert a.ipv4 in ips and a.ipv6 in ips, role
    assert ctx.settings.hetzner.private_cidr in ips
    assert set(ctx.settings.admin.ssh_cidrs) <= set(ips)
    assert not fail2ban.runs_fail2ban(ctx.hosts["mx2"])  # no logins there
    from mailstack import supervision

    assert fail2ban.UNIT in supervision.units(ctx.hosts["mx1"])
    assert fail2ban.UNIT in supervision.units(ctx.hosts["imap"])
    assert fail2ban.UNIT not in supervision.units(ctx.hosts["mx2"])


# --------------------------------------------------------------------------- real daemons

STAMP = r"""
import sys, time, socket
pid = sys.argv[1]
for line in sys.stdin:
    sys.stdout.write(time.strftime("%b %d %H:%M:%S") + f" mx1 smtpd[{pid}]: " + line)
    sys.stdout.flush()
"""

CLIENT = r"""
import base64, imaplib, json, smtplib, socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = []
for a in json.loads(sys.stdin.read()):
    fam = socket.AF_INET6 if ":" in a["src"] else socket.AF_INET
    try:
        if a["kind"] == "smtp":
            if a["port"] == 465:
                s = smtplib.SMTP_SSL(a["server"], 465, source_address=(a["src"], 0), timeout=20, context=ctx)
            else:
                s = smtplib.SMTP(a["server"], a["port"], source_address=(a["src"], 0), timeout=20)
                s.starttls(context=ctx)
            try:
                out.append(str(s.login(a["user"], a["password"])[0]))
            except smtplib.SMTPAuthenticationError as e:
                out.append(str(e.smtp_code))
            s.close()
        elif a["kind"] == "imap":
            class C(imaplib.IMAP4_SSL):
                def _create_socket(self, timeout):
                    sock = socket.create_connection((self.host, self.port), timeout, source_address=(a["src"], 0))
                    return self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            with C(a["server"], 993, ssl_context=ctx, timeout=20) as c:
                try:
                    out.append(c.login(a["user"], a["password"])[0])
                except imaplib.IMAP4.error as e:
                    out.append("NO")
        else:  # ManageSieve: STARTTLS, AUTHENTICATE PLAIN
            def reply(s):
                buf = b""
                while not any(buf.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].startswith(w) for w in (b"OK", b"NO", b"BYE")):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                return buf.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].decode()
            with socket.create_connection((a["server"], 4190), timeout=20, source_address=(a["src"], 0)) as raw:
                reply(raw)
                raw.sendall(b"STARTTLS\r\n")
                reply(raw)
                with ctx.wrap_socket(raw) as s:
                    reply(s)
                    tok = base64.b64encode(("\0" + a["user"] + "\0" + a["password"]).encode())
                    s.sendall(b'AUTHENTICATE "PLAIN" "' + tok + b'"\r\n')
                    out.append(reply(s).split()[0])
    except ConnectionRefusedError:
        out.append("refused")
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.abort) as e:
        out.append("error: " + repr(e))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def banning():
    ctx = make_context(settings_from(topology="single", limits={"loginFailures": FAILURES}))
    host = ctx.hosts["mx1"]
    root = Path(tempfile.mkdtemp(prefix=f"mailstack-bans-{uuid.uuid4().hex[:8]}-"))
    root.chmod(0o755)
    ns = None
    dovecot_conf = None
    try:
        conf = stage(ctx, host, root, rspamd=False)
        ns = Netns(root, host.private_ip, [OUTSIDE_OK, OUTSIDE_NO_PTR, ADMIN])
        # IPv6 on the same link (nodad: usable at once).
        for cmd, client in (
            (["ip", "-6", "addr", "add", f"{SERVER6}/128", "dev", "vs", "nodad"], False),
            (["ip", "-6", "route", "add", f"{ATTACKER6}/128", "dev", "vs"], False),
            (["ip", "-6", "route", "add", f"{GOOD6}/128", "dev", "vs"], False),
            (["ip", "-6", "addr", "add", f"{ATTACKER6}/128", "dev", "vc", "nodad"], True),
            (["ip", "-6", "addr", "add", f"{GOOD6}/128", "dev", "vc", "nodad"], True),
            (["ip", "-6", "route", "add", f"{SERVER6}/128", "dev", "vc"], True),
        ):
            r = ns.run(*cmd, client=client)
            assert r.returncode == 0, (cmd, r.stderr)
        start_resolver_and_database(ns, ctx, root)
        # Dovecot with the rendered config, on the namespace's PostgreSQL and real ports.
        # Its certificate is smtpd's (the same host); its log where the jail reads it.
        layout = layout_under(root / "dovecot", tls_dir=str(root / "tls"), log_path=str(root / "dovecot.log"))
        make_dirs(layout)
        install_dovecot(ctx, host, layout)
        dovecot_conf = Path(layout.etc) / "dovecot.conf"
        # The master daemonizes; its children would hold captured pipes open.
        subprocess.run(
            ns.cmd("dovecot", "-c", dovecot_conf),
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # smtpd, its lines stamped the way the journal hands them to fail2ban.
        (root / "stamp.py").write_text(STAMP)
        smtpd = ns.start(
            "sh", "-c", f"{SMTPD} -d -f {conf} 2>&1 | {sys.executable} -u {root}/stamp.py $$", log=root / "smtpd.log"
        )
        for port in (465, 587):
            ns.wait_port(host.private_ip, port, smtpd, root / "smtpd.log")
        ns.wait_port(host.private_ip, 993, smtpd, root / "dovecot.log")
        # fail2ban with the rendered jails, on these log files instead of the journal.
        f2b = _confdir(ctx, host, root)
        (f2b / "fail2ban.local").write_text(
            f"[Definition]\nlogtarget = {root}/fail2ban.log\nloglevel = INFO\n"
            f"socket = {root}/f2b.sock\npidfile = {root}/f2b.pid\ndbfile = :memory:\n"
        )
        (f2b / "jail.d" / "zz-test.local").write_text(
            "[DEFAULT]\nbackend = polling\n"
            f"[mailstack-smtpd]\nlogpath = {root}/smtpd.log\n"
            f"[mailstack-dovecot]\nlogpath = {root}/dovecot.log\n"
        )
        server = ns.start("fail2ban-server", "-f", "-x", "-c", f2b, log=root / "fail2ban.out")
        client = ["fail2ban-client", "-c", f2b]
        for _ in range(300):
            if server.poll() is not None:
                raise AssertionError((root / "fail2ban.out").read_text())
            if ns.run(*client, "ping").returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("fail2ban does not answer")
        yield dict(ctx=ctx, ns=ns, root=root, client=client, ip=host.private_ip)
    finally:
        if ns:
            if dovecot_conf:
                ns.run("doveadm", "-c", dovecot_conf, "stop")
                pid = Path(layout.base_dir) / "master.pid"
                end = time.monotonic() + 15
                while pid.exists() and time.monotonic() < end:
                    time.sleep(0.1)
                if pid.exists():
                    try:
                        os.kill(int(pid.read_text()), signal.SIGKILL)
                    except (ValueError, ProcessLookupError):
                        pass
            ns.close()
        shutil.rmtree(root, ignore_errors=True)


def attempts(env, acts: list[dict]) -> list[str]:
    for a in acts:
        a.setdefault("server", SERVER6 if ":" in a["src"] else env["ip"])
    r = env["ns"].run(sys.executable, "-c", CLIENT, input=json.dumps(acts), client=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def banned(env, jail: str) -> list[str]:
    r = env["ns"].run(*env["client"], "get", jail, "banip")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def wait_banned(env, jail: str, ip: str) -> bool:
    for _ in range(100):  # fail2ban polls its files once a second
        if ip in banned(env, jail):
            return True
        time.sleep(0.2)
    return False


def _log(env) -> str:
    return "\n".join(
        (env["root"] / n).read_text(errors="replace")[-2500:]
        for n in ("fail2ban.log", "smtpd.log", "dovecot.log")
        if (env["root"] / n).exists()
    )


def good(src: str, kind: str, port: int = 0) -> dict:
    return {"kind": kind, "port": port, "src": src, "user": "alice@example.org", "password": TEST_PASSWORD}


def bad(src: str, kind: str, port: int = 0) -> dict:
    return {"kind": kind, "port": port, "src": src, "user": "alice@example.org", "password": "wrong"}


def test_failed_smtp_logins_get_the_address_blocked(banning):
    attacker = OUTSIDE_NO_PTR
    # Each refused session holds one or two failures (smtplib tries PLAIN, then LOGIN);
    # once the ban is in, later sessions are refused.
    out = attempts(banning, [bad(attacker, "smtp", (587, 465)[i % 2]) for i in range(FAILURES)])
    assert out[0] == "535", out
    assert wait_banned(banning, "mailstack-smtpd", attacker), _log(banning)
    # Blocked on every submission port, also with the right password.
    assert attempts(banning, [good(attacker, "smtp", 587), good(attacker, "smtp", 465)]) == ["refused", "refused"]
    # Someone else with the right password is not affected, nor is that user.
    assert attempts(banning, [good(OUTSIDE_OK, "smtp", 587), good(OUTSIDE_OK, "smtp", 465)]) == ["235", "235"], out
    # The ban is an element of fail2ban's own set in its own table.
    r = banning["ns"].run("nft", "list", "table", "inet", fail2ban.NFT_TABLE)
    assert attacker in r.stdout, r.stdout


def test_failed_imap_and_sieve_logins_over_ipv6_get_the_address_blocked(banning):
    acts = [bad(ATTACKER6, "imap"), bad(ATTACKER6, "sieve"), bad(ATTACKER6, "imap")]
    assert attempts(banning, acts) == ["NO", "NO", "NO"]
    assert wait_banned(banning, "mailstack-dovecot", ATTACKER6), _log(banning)
    assert attempts(banning, [good(ATTACKER6, "imap"), good(ATTACKER6, "sieve")]) == ["refused", "refused"]
    # Another IPv6 address, and IPv4, with the right password: unaffected.
    assert attempts(banning, [good(GOOD6, "imap"), good(GOOD6, "sieve"), good(OUTSIDE_OK, "imap")]) == [
        "OK",
        "OK",
        "OK",
    ]
    r = banning["ns"].run("nft", "list", "table", "inet", fail2ban.NFT_TABLE)
    assert ATTACKER6 in r.stdout, r.stdout


def test_admin_networks_are_never_banned(banning):
    out = attempts(banning, [bad(ADMIN, "smtp", 587) for _ in range(FAILURES + 1)])
    assert set(out) == {"535"}, out
    log = banning["root"] / "fail2ban.log"
    for _ in range(100):  # until fail2ban has read those lines (it says it ignores them)
        if f"Ignore {ADMIN}" in log.read_text(errors="replace"):
            break
        time.sleep(0.2)
    assert f"Ignore {ADMIN}" in log.read_text(errors="replace"), _log(banning)
    assert ADMIN not in banned(banning, "mailstack-smtpd")
    assert attempts(banning, [good(ADMIN, "smtp", 587)]) == ["235"]


def test_unban_lets_the_address_back(banning):
    """A ban ends (here by hand; on the servers after banSeconds): the address logs in again."""
    assert OUTSIDE_NO_PTR in banned(banning, "mailstack-smtpd")
    r = banning["ns"].run(*banning["client"], "set", "mailstack-smtpd", "unbanip", OUTSIDE_NO_PTR)
    assert r.returncode == 0, r.stderr
    assert attempts(banning, [good(OUTSIDE_NO_PTR, "smtp", 587)]) == ["235"]
