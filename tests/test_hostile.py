"""Hostile input against the real daemons: mx1's rendered smtpd.conf with every filter
(the connect filters, filter-senderscore, our filter-rspamd shim and a real Rspamd),
table-postgres on a real PostgreSQL, and a real Dovecot with IMAPS and ManageSieve.

Hundreds of malformed inputs are sent batch by batch (delimiters and shell
metacharacters, CR/LF and NUL in odd places, overlong values, invalid UTF-8, broken
base64, odd AUTH sequences and ESMTP parameters). After each batch every listener must
still answer, a real login must still work, and no daemon may have exited. No timing
assertions: every session is bounded by socket timeouts only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from lab import hostile_cases as cases
from mailstack import firewall
from mailstack import hosts as H
from mailstack import smtpd as mx
from tests.conftest import TEST_PASSWORD, make_context, settings_from
from tests.daemons.netns import Netns, start_resolver_and_database
from tests.daemons.rspamd import CONTROLLER_PASSWORD
from tests.daemons.rspamd import start as start_rspamd
from tests.daemons.smtpd import SMTPD, stage
from tests.daemons.unbound import OUTSIDE_NO_PTR, OUTSIDE_OK
from tests.test_dovecot import imap_login
from tests.test_smtpd import EXAMPLE_ALIASES

pytestmark = pytest.mark.timeout(900)

# A client whose PTR holds the filter protocol's delimiter: rDNS is chosen by whoever
# controls the client's reverse zone, a stranger.
OUTSIDE_PIPE_PTR = "10.99.0.9"
# Every port mx1's smtpd listens on.
MX1_PORTS = [p for svc in (H.MX, H.SUBMISSION) for _, p, _ in firewall.PUBLIC[svc]] + [mx.RELAY_PORT]

HOSTILE_DNS = f"""
  local-data-ptr: "{OUTSIDE_PIPE_PTR} a|b.evil.test"
  local-data: "a|b.evil.test. A {OUTSIDE_PIPE_PTR}"
  local-zone: "evil.test." static
  # Nothing here reaches the internet: every other name is answered at once.
  local-zone: "." static
"""


@pytest.fixture(scope="module")
def mx1_full():
    """mx1 as deployed: every filter on port 25, the rspamd filter on submission."""
    ctx = make_context(settings_from(aliases=EXAMPLE_ALIASES))
    mx1 = ctx.hosts["mx1"]
    root = Path(tempfile.mkdtemp(prefix=f"mailstack-hostile-{uuid.uuid4().hex[:8]}-"))
    root.chmod(0o755)
    ns = None
    try:
        conf = stage(ctx, mx1, root, rspamd=True)
        ns = Netns(
            root,
            mx1.private_ip,
            [ctx.hosts["mx2"].private_ip, ctx.hosts["imap"].private_ip, OUTSIDE_OK, OUTSIDE_NO_PTR, OUTSIDE_PIPE_PTR],
        )
        procs = start_resolver_and_database(ns, ctx, root, HOSTILE_DNS)
        rspamd = start_rspamd(ns, ctx, root)
        smtpd = ns.start(SMTPD, "-d", "-f", conf, log=root / "smtpd.log")
        for port in MX1_PORTS:
            ns.wait_port(mx1.private_ip, port, smtpd, root / "smtpd.log")
        yield dict(ctx=ctx, ns=ns, root=root, procs={"smtpd": smtpd, "rspamd": rspamd, **procs})
    finally:
        if ns:
            ns.close()
        shutil.rmtree(root, ignore_errors=True)


def _client(ns: Netns, script: str, payload: dict) -> dict:
    r = ns.run(sys.executable, "-c", script, input=json.dumps(payload), client=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _assert_smtpd_alive(env, what: str) -> None:
    ctx, ns, root = env["ctx"], env["ns"], env["root"]
    ip = ctx.hosts["mx1"].private_ip
    dead = [n for n, p in env["procs"].items() if p.poll() is not None]
    log = (root / "smtpd.log").read_text(errors="replace")
    assert not dead, f"after {what}: {dead} exited\n{log[-3000:]}"
    health = _client(
        ns,
        cases.HEALTH_CLIENT,
        dict(server=ip, ports=MX1_PORTS, src=OUTSIDE_OK, user="alice@example.org", password=TEST_PASSWORD),
    )
    assert health["closed"] == [], f"after {what}: ports not answering {health}\n{log[-3000:]}"
    assert health["auth"] == 235, f"after {what}: a real login no longer works {health}"
    assert health["delivered"] == 250, f"after {what}: mail no longer flows {health}"


@pytest.mark.parametrize("batch", sorted(cases.SMTP_BATCHES))
def test_smtpd_survives_hostile_input(mx1_full, batch):
    ctx, ns = mx1_full["ctx"], mx1_full["ns"]
    ip = ctx.hosts["mx1"].private_ip
    sessions = cases.SMTP_BATCHES[batch]
    out = _client(
        ns,
        cases.SMTP_CLIENT,
        dict(
            server=ip,
            sessions=sessions,
            src=OUTSIDE_OK,
            pipe_src=OUTSIDE_PIPE_PTR,
            user="alice@example.org",
            password=TEST_PASSWORD,
        ),
    )
    assert out["ran"] == len(sessions)
    _assert_smtpd_alive(mx1_full, f"batch {batch} ({len(sessions)} sessions)")


def test_rspamd_controller_wants_its_password_from_localhost_too(mx1_full):
    """Rspamd's default lets any local process use the controller without a password
    (secure_ip 127.0.0.1, ::1); ours refuses /stat without it and answers with it."""
    ns = mx1_full["ns"]

    def stat(*headers: str) -> str:
        r = ns.run(
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            *[a for h in headers for a in ("-H", h)],
            "http://127.0.0.1:11334/stat",
        )
        return r.stdout.strip()

    assert stat() in ("401", "403")
    assert stat("Password: wrong") in ("401", "403")
    assert stat(f"Password: {CONTROLLER_PASSWORD}") == "200"


# ---------------------------------------------------------------- Dovecot: IMAPS, ManageSieve


def _sieve_login(port: int, user: str, password: str, source: str) -> str:
    """A real ManageSieve login (STARTTLS, AUTHENTICATE PLAIN); returns the reply line."""
    import base64
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    def reply(s) -> bytes:
        buf = b""
        while not any(buf.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].startswith(w) for w in (b"OK", b"NO", b"BYE")):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]

    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)) as raw:
        reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        reply(raw)
        with ctx.wrap_socket(raw) as s:
            reply(s)
            token = base64.b64encode(f"\0{user}\0{password}".encode())
            s.sendall(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
            return reply(s).decode()


_good_source = iter(range(1, 250))


@pytest.mark.parametrize("batch", sorted(cases.IMAP_BATCHES))
def test_dovecot_survives_hostile_input(dovecot, batch):
    layout = dovecot["layout"]
    sessions = cases.IMAP_BATCHES[batch]
    r = subprocess.run(
        [sys.executable, "-c", cases.IMAP_CLIENT],
        capture_output=True,
        text=True,
        timeout=600,
        input=json.dumps(
            dict(
                host="127.0.0.1",
                imaps_port=layout.imaps_port,
                sieve_port=layout.sieve_port,
                sessions=sessions,
                user="alice@example.org",
                password=TEST_PASSWORD,
            )
        ),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["ran"] == len(sessions)
    pid_file = dovecot["base"] / "run" / "master.pid"
    assert pid_file.exists() and Path(f"/proc/{int(pid_file.read_text())}").exists(), "the Dovecot master exited"
    src = f"127.0.3.{next(_good_source)}"
    assert imap_login(dovecot, "alice@example.org", TEST_PASSWORD, source=src) == "OK"
    assert _sieve_login(layout.sieve_port, "alice@example.org", TEST_PASSWORD, src).startswith("OK")
