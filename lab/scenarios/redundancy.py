"""Redundancy: mx2 holds mail while mx1 is off and hands it over, and a user added
through mail-sync reaches the replicas (logs in on imap, receives mail)."""

from __future__ import annotations

import time

from .. import config, internet, machines, outside_mta, steps
from ..netns import inside
from ..util import wait_until
from .clients import (
    FORWARD,
    SUBADDRESS,
    TEAM,
    LabSMTP,
    _expect,
    _host_ip,
    _imap_login_ok,
    _port_open,
    _s,
    _token,
    copies,
    imap_count,
    inbound,
    machines_roles,
    outside_messages,
    tls_context,
    via_outside,
    wait_delivered,
    wait_imap,
)


def s_backup_mx() -> str:
    """(4) mx1 down: mx2 queues for valid users, 550 for unknown; mx1 back: delivered once."""
    if "mx2" not in machines_roles():
        return "skipped: single topology"
    s = _s()
    # A user, a sub-address, an alias with three members and an alias that forwards
    # outside too: each copy must arrive exactly once.
    sent = {"alice@example.org": _token(), SUBADDRESS: _token(), TEAM: _token(), FORWARD: _token()}
    machines.stop("mx1")
    try:
        # The outside Postfix finds mx1 (MX 10) dark and hands the mail to mx2 (MX 20).
        mark = len(outside_mta.log_text())
        for to, tok in sent.items():
            via_outside(to, tok)
        wait_until(outside_mta.queue_empty, 90, "the outside Postfix to hand the mail to mx2")
        with inside():
            with LabSMTP(s.fqdn("mx2"), _host_ip("mx2"), 25) as c:
                c.starttls(context=tls_context())
                c.ehlo()
                for unknown in ("nobody-here@example.org", "nobody-here+alice@example.org"):
                    c.mail(f"x@{internet.OUTSIDE_DOMAIN}")
                    code, _ = c.rcpt(unknown)
                    c.rset()
                    _expect(code == 550, f"mx2 answered {code} for unknown {unknown} (want 550)")
        q = machines.sh("mx2", "smtpctl show queue").stdout
        for to in sent:
            _expect(to in q, f"mx2 queue does not hold the message to {to}")
        relays = {
            line.split("relay=", 1)[1].split("[", 1)[0]
            for line in outside_mta.log_text()[mark:].splitlines()
            if "status=sent" in line
        }
        _expect(relays == {s.fqdn("mx2")}, f"the outside Postfix delivered to {relays}, not mx2 alone")
    finally:
        machines.start("mx1")
        t_start = time.monotonic()
    machines.wait_booted("mx1")
    wait_until(lambda: _port_open(_host_ip("mx1"), 25), 120, "mx1:25 after restart")
    # No manual flush: mx2's mailstack-smtpd-flush timer runs `smtpctl schedule all`
    # every 5 s, so the messages must arrive within about a minute by themselves.
    t0 = time.monotonic()
    for to, tok in sent.items():
        wait_delivered(to, tok, timeout=max(10.0, 90 - (time.monotonic() - t0)))
    dt = time.monotonic() - t0
    total = time.monotonic() - t_start
    # Judged once mx2 and mx1 hold nothing more: a copy still queued could arrive twice.
    for role in ("mx2", "mx1"):
        wait_until(lambda: machines.sh(role, "smtpctl show queue").stdout.strip() == "", 60, f"{role}'s queue to empty")
    _expect(outside_mta.queue_empty(), f"the outside Postfix still holds mail:\n{outside_mta.queue()}")
    for to, tok in sent.items():
        ours, outside = copies(to)
        for who in ours:
            n = imap_count(who, tok)
            _expect(n == 1, f"{tok} arrived {n} times for {who}")
        at_outside = outside_messages(tok)
        bounces = [m for m in at_outside if b"MAILER-DAEMON" in m or b"Delivery Status Notification" in m]
        _expect(not bounces, f"a bounce came back for the message to {to}")
        _expect(
            len(at_outside) == len(outside),
            f"the outside MTA got {len(at_outside)} copies of {tok} (want {len(outside)})",
        )
    return (
        f"4 messages (user, sub-address, 3-member alias, forwarding alias) sent by the outside "
        f"Postfix to mx2 (MX 20) while mx1 was off, "
        f"unknown user 550; all delivered {total:.0f}s after mx1 was started ({dt:.0f}s after "
        f"it accepted mail again), each copy exactly once, no bounce, queues empty"
    )


def s_replication() -> str:
    """(5) a user added through mail-sync logs in on imap and receives mail."""
    s = _s()
    new = "dave@example.org"
    users = [u.model_dump(by_alias=True, exclude_none=True) for u in s.users] + [{"address": new}]
    s2 = config.running_settings(users=users)
    data = config.load_or_make_secrets(s2)
    ctx2 = config.context(s2, data)
    steps.run_plan(ctx2, only={"mail-sync"})
    wait_until(lambda: imap_count(new, "nothing") == 0, 60, f"{new} to log in on imap")
    tok = _token()
    inbound(new, tok)
    wait_imap(new, tok)
    # And back: the stack's own settings again remove the user everywhere (later
    # scenarios, such as redeploy, then start from the stack as configured).
    steps.run_plan(config.context(_s(), data), only={"mail-sync"})
    wait_until(lambda: not _imap_login_ok(new), 60, f"{new} to be refused on imap")
    return f"{new} synced, replicated, logged in and received mail; removed again, refused"
