"""Abuse limits against the real daemons (docs/hardening.md): mx1's rendered smtpd.conf
with its filters and our guard, a real Rspamd with mx1's rendered local.d (DKIM keys
included) and a real redis, table-postgres on a real PostgreSQL, in network namespaces.

- outbound limits per login and per sender address (Rspamd's ratelimit in redis): the
  message over the limit gets a 4xx, and the postmaster gets a note;
- the header From of authenticated mail must be the (already checked) envelope sender;
- forged X-Spam* and Authentication-Results headers claiming to be ours are stripped.

What smtpd did with a message is read from its own queue (`smtpctl show message`):
nothing can be delivered in this harness (no Dovecot at the LMTP address, no MX for
the outside), so accepted mail stays there.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mailstack import rspamd
from tests.conftest import TEST_PASSWORD, make_context, settings_from
from tests.daemons.netns import Netns, start_resolver_and_database
from tests.daemons.rspamd import start as start_rspamd
from tests.daemons.smtpd import SMTPD, stage
from tests.daemons.unbound import OUTSIDE_NO_PTR, OUTSIDE_OK
from tests.test_hostile import MX1_PORTS
from tests.test_rspamd import start_redis
from tests.test_smtpd import EXAMPLE_ALIASES

pytestmark = pytest.mark.timeout(600)

LIMIT = 10  # the smallest the settings allow
SHARED = {"address": "shared@example.org", "to": ["alice@example.org", "bob@example.org"]}
# Outside mail has somewhere to go that never answers, so it waits in the queue.
SINK_DNS = f"""
  local-zone: "elsewhere.test." static
  local-data: "elsewhere.test. MX 10 sink.good.test."
  local-data: "sink.good.test. A {OUTSIDE_NO_PTR}"
"""

SEND_CLIENT = r"""
import json, smtplib, ssl, sys
a = json.loads(sys.stdin.read())
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
results = []
for m in a["messages"]:
    try:
        if m["port"] == 465:
            s = smtplib.SMTP_SSL(a["server"], 465, source_address=(m["src"], 0), timeout=30, context=ctx)
        else:
            s = smtplib.SMTP(a["server"], m["port"], source_address=(m["src"], 0), timeout=30)
            if m["port"] == 587:
                s.starttls(context=ctx)
        if m.get("user"):
            s.login(m["user"], m["password"])
        s.sendmail(m["from"], m["to"], m["data"].encode())
        results.append([250, ""])
        s.quit()
    except smtplib.SMTPResponseException as e:
        results.append([e.smtp_code, e.smtp_error.decode(errors="replace")])
    except smtplib.SMTPRecipientsRefused as e:
        code, msg = list(e.recipients.values())[0]
        results.append([code, msg.decode(errors="replace")])
    except (smtplib.SMTPException, OSError) as e:
        results.append([0, repr(e)])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def mx1_limits():
    ctx = make_context(
        settings_from(
            aliases=[*EXAMPLE_ALIASES, SHARED], limits={"sendPerUserPerHour": LIMIT, "sendPerAddressPerHour": LIMIT}
        )
    )
    mx1 = ctx.hosts["mx1"]
    root = Path(tempfile.mkdtemp(prefix=f"mailstack-abuse-{uuid.uuid4().hex[:8]}-"))
    root.chmod(0o755)
    ns = None
    try:
        conf = stage(ctx, mx1, root, rspamd=True)
        ns = Netns(
            root,
            mx1.private_ip,
            [
                ctx.hosts["mx2"].private_ip,
                ctx.hosts["imap"].private_ip,
                OUTSIDE_OK,
                OUTSIDE_NO_PTR,
                "10.99.0.20",
                "10.99.0.21",
            ],
        )
        start_resolver_and_database(ns, ctx, root, SINK_DNS)
        # mx1's own Redis file (it wants the password Rspamd's rendered files give it).
        start_redis(ns, ctx, mx1, root)
        start_rspamd(ns, ctx, root, dkim=True)
        smtpd = ns.start(SMTPD, "-d", "-f", conf, log=root / "smtpd.log")
        for port in MX1_PORTS:
            ns.wait_port(mx1.private_ip, port, smtpd, root / "smtpd.log")
        yield dict(ctx=ctx, ns=ns, root=root)
    finally:
        if ns:
            ns.close()
        shutil.rmtree(root, ignore_errors=True)


def message(frm: str, to: str, subject: str, extra: str = "") -> str:
    return (
        f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@client.test>\r\n{extra}\r\nHello.\r\n"
    )


def send(env, messages: list[dict]) -> list[list]:
    r = env["ns"].run(
        sys.executable,
        "-c",
        SEND_CLIENT,
        client=True,
        timeout=300,
        input=json.dumps(dict(server=env["ctx"].hosts["mx1"].private_ip, messages=messages)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def submit(
    user: str,
    frm: str,
    to: str,
    subject: str,
    env_from: str | None = None,
    src: str = OUTSIDE_NO_PTR,
    port: int = 587,
    extra: str = "",
) -> dict:
    return {
        "port": port,
        "src": src,
        "user": user,
        "password": TEST_PASSWORD,
        "from": env_from or frm,
        "to": [to],
        "data": message(frm, to, subject, extra),
    }


def queued(env, subject: str, wait: float = 0) -> list[str]:
    """The queued messages (as smtpd holds them) whose Subject is `subject`."""
    ns = env["ns"]
    end = time.monotonic() + wait
    while True:
        r = ns.run("smtpctl", "show", "queue")
        assert r.returncode == 0, r.stderr
        found = []
        for evpid in {line.split("|")[0] for line in r.stdout.splitlines() if "|" in line}:
            m = ns.run("smtpctl", "show", "message", evpid)
            if m.returncode == 0 and re.search(rf"^Subject: {re.escape(subject)}\r?$", m.stdout, re.M):
                found.append(m.stdout)
        if found or time.monotonic() >= end:
            return found
        time.sleep(0.5)


def headers(msg: str) -> list[tuple[str, str]]:
    import email

    return list(email.message_from_string(msg.replace("\r\n", "\n")).items())


# ------------------------------------------------------------------ 3: header From


def test_header_from_must_be_the_users_own(mx1_limits):
    tag = uuid.uuid4().hex[:8]
    # carol: her own address and team@example.net (an alias that delivers to her); the
    # other tests use alice's and bob's limits.
    c = "carol@example.net"
    cases = [
        # (login, header From, envelope sender, accepted?)
        (c, c, None, True),
        (c, "Team <team@example.net>", "team@example.net", True),
        (c, "Carol <CAROL@Example.net>", c, True),
        (c, "bob@example.org", c, False),
        (c, f"Carol <{c}>, bob@example.org", c, False),
        (c, "team@example.net", c, False),
    ]
    msgs = [
        submit(u, frm, f"x-{tag}-{i}@elsewhere.test", f"from-{tag}-{i}", env_from=ef, src=f"10.99.0.{20 + i % 2}")
        for i, (u, frm, ef, _) in enumerate(cases)
    ]
    results = send(mx1_limits, msgs)
    for i, ((user, frm, _, ok), (code, text)) in enumerate(zip(cases, results)):
        if ok:
            assert code == 250, (frm, code, text)
            held = queued(mx1_limits, f"from-{tag}-{i}", wait=10)
            assert len(held) == 1, (frm, held)
            sigs = [v for k, v in headers(held[0]) if k.lower() == "dkim-signature"]
            assert len(sigs) == 1 and "d=example.net;" in sigs[0].replace(" ", ""), (frm, held[0][:2000])
        else:
            assert code == 550 and "From header" in text, (frm, code, text)
            assert queued(mx1_limits, f"from-{tag}-{i}") == []


# ------------------------------------------------------------------ 7: forged verdicts


def test_forged_verdict_headers_are_stripped(mx1_limits):
    tag = uuid.uuid4().hex[:8]
    forged = (
        "Authentication-Results: mx1.example.org; dkim=pass header.d=example.org\r\n"
        "authentication-results:\r\n  example.org; spf=pass\r\n"
        "X-Spam-Status: No, score=-100\r\n"
        "x-spam: no\r\n"
        "X-Spam-Flag: NO\r\n"
        "Authentication-Results: relay.elsewhere.test; spf=pass\r\n"
    )
    m = {
        "port": 25,
        "src": OUTSIDE_OK,
        "from": "someone@good.test",
        "to": [f"alice+{tag}@example.org"],
        "data": message("someone@good.test", "alice@example.org", f"verdict-{tag}", forged),
    }
    assert send(mx1_limits, [m]) == [[250, ""]]
    held = queued(mx1_limits, f"verdict-{tag}", wait=10)
    assert len(held) == 1
    hs = headers(held[0])
    ar = [v for k, v in hs if k.lower() == "authentication-results"]
    spam_headers = [(k, v) for k, v in hs if k.lower().startswith("x-spam")]
    # Rspamd's own verdict is there, none of the forged ones.
    ours = [v for v in ar if v.split(";")[0].strip().endswith("example.org")]
    assert len(ours) == 1 and "dkim=pass header.d=example.org" not in ours[0], ar
    # (Rspamd's milter_headers also has filter-rspamd drop "Authentication-Results:" as
    # spelled; the guard is what catches other spellings and X-Spam*.)
    # Ham: Rspamd adds no X-Spam header through filter-rspamd (only "add header" mail gets
    # X-Spam: yes), so none may be left.
    assert spam_headers == [], spam_headers
    assert f"verdict-{tag}" in dict(hs).get("Subject", "")


# ------------------------------------------------------------------ 2: outbound limits


def test_outbound_limits_per_login_and_per_address(mx1_limits):
    tag = uuid.uuid4().hex[:8]
    # alice sends LIMIT messages as the shared alias: her login's and the address's
    # buckets are both full then.
    first = send(
        mx1_limits,
        [
            submit(
                "alice@example.org",
                SHARED["address"],
                f"r{i}-{tag}@elsewhere.test",
                f"rl-{tag}-{i}",
                port=(587, 465)[i % 2],
            )
            for i in range(LIMIT)
        ],
    )
    assert first == [[250, ""]] * LIMIT, first
    over = send(
        mx1_limits,
        [
            # alice, as herself: her login is over its limit
            submit("alice@example.org", "alice@example.org", f"a-{tag}@elsewhere.test", f"rl-{tag}-alice"),
            # bob, as the shared alias: that address is over its limit
            submit("bob@example.org", SHARED["address"], f"b-{tag}@elsewhere.test", f"rl-{tag}-bob-shared"),
            # bob as himself: neither limit is his
            submit("bob@example.org", "bob@example.org", f"c-{tag}@elsewhere.test", f"rl-{tag}-bob"),
        ],
    )
    assert over[0][0] == 451 and "this login" in over[0][1], over
    assert over[1][0] == 451 and "sender address" in over[1][1], over
    assert over[2] == [250, ""], over
    # Inbound mail from outside is never counted.
    inbound = send(
        mx1_limits,
        [
            {
                "port": 25,
                "src": OUTSIDE_OK,
                "from": SHARED["address"],
                "to": [f"alice+{tag}@example.org"],
                "data": message("x@good.test", "alice@example.org", f"rl-{tag}-in"),
            }
        ],
    )
    assert inbound == [[250, ""]]
    # The postmaster (postmaster@ -> alice@) hears of it, once for alice's login.
    notes = queued(mx1_limits, "Sending limit reached by alice@example.org", wait=30)
    assert len(notes) == 1, (mx1_limits["root"] / "smtpd.log").read_text()[-3000:]
    assert "Client IP: " + OUTSIDE_NO_PTR in notes[0] and rspamd.postmaster(mx1_limits["ctx"]) in notes[0]
