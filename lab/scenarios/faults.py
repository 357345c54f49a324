"""Faults under load: a bounded stream of inbound mail goes through the outside Postfix
(MX look-up, its own queue and retries) while daemons are killed and hosts switched off,
and afterwards every message is in its mailbox exactly once, nothing bounced, every
queue is empty and every daemon is back by itself."""
from __future__ import annotations

import re
import threading
import time

from mailstack import hosts as H
from mailstack import supervision

from .. import machines, outside_mta
from ..util import log, wait_until
from .clients import _expect, _s, imap_session, machines_roles, via_outside

MESSAGES = 200
SEND_SECONDS = 100          # the load is spread over this long, so every fault meets it
RECIPIENTS = ("alice@example.org", "bob@example.org", "carol@example.net")
DRAIN_WITHIN = 300          # after the last fault, for every queue to empty


def _kill9(role: str, unit: str) -> str:
    pid = machines.sh(role, f"systemctl show -p MainPID --value {unit}").stdout.strip()
    machines.sh(role, f"kill -9 {pid}")
    return f"kill -9 {unit.removesuffix('.service')} on {role}"


def _pg_stopped(role: str, seconds: int) -> str:
    # `systemctl stop` is an order, which the restart policy respects: it stays down.
    machines.sh(role, "systemctl stop postgresql@15-main")
    time.sleep(seconds)
    machines.sh(role, "systemctl start postgresql@15-main")
    return f"PostgreSQL on {role} stopped {seconds}s"


def _power_cycle(role: str) -> str:
    machines.stop(role)            # a clean poweroff, while mail is being delivered to it
    machines.start(role)
    machines.wait_booted(role, 180)
    return f"{role} powered off and on"


def _faults(ha: bool) -> list[tuple[float, object, tuple]]:
    """(seconds after the load starts, fault, its arguments), run one after the other."""
    imap = "imap" if ha else "mx1"
    return [
        (8, _kill9, ("mx1", "opensmtpd.service")),
        (20, _kill9, (imap, "dovecot.service")),
        (32, _power_cycle, (imap,)) if ha else (32, _kill9, ("mx1", "opensmtpd.service")),
        (70, _pg_stopped, ("mx1", 30)),
    ]


def _mailbox(address: str, run: str) -> list[str]:
    """The Message-IDs of this run's messages in a user's INBOX (one per stored copy)."""
    with imap_session(address) as c:
        c.select("INBOX", readonly=True)
        typ, data = c.search(None, "SUBJECT", f'"{run}"')
        ids = data[0].split() if typ == "OK" and data[0] else []
        out = []
        for i in range(0, len(ids), 100):
            typ, got = c.fetch(b",".join(ids[i:i + 100]), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            for part in got:
                if isinstance(part, tuple):
                    m = re.search(rb"<([^>]+)>", part[1])
                    if m:
                        out.append(m.group(1).decode())
        return out


def _queues_empty(roles: list[str]) -> bool:
    return outside_mta.queue_empty() and all(
        machines.sh(r, "smtpctl show queue").stdout.strip() == "" for r in roles
        if r in ("mx1", "mx2"))


def _all_active(roles: list[str]) -> list[str]:
    down = []
    for role in roles:
        for unit in supervision.units(H.hosts(_s())[role]):
            if machines.sh(role, f"systemctl is-active --quiet {unit}").returncode:
                down.append(f"{role}:{unit}")
    return down


def s_faults() -> str:
    """(extra) 200 messages through the outside Postfix while smtpd and Dovecot are
    killed, imap is powered off and on and mx1's PostgreSQL is stopped: none lost, none
    bounced, none stored twice, every daemon back by itself."""
    roles = machines_roles()
    ha = "imap" in roles
    run = "f" + time.strftime("%H%M%S")
    sent: dict[str, str] = {}          # Message-ID -> recipient
    errors: list[str] = []

    def load():
        t0 = time.monotonic()
        for i in range(MESSAGES):
            wait = t0 + i * SEND_SECONDS / MESSAGES - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            to = RECIPIENTS[i % len(RECIPIENTS)]
            token = f"{run}-{i}"
            try:
                via_outside(to, token)
                sent[f"{token}@outside.example.com"] = to
            except Exception as exc:  # the outside Postfix itself must take every one
                errors.append(f"{token}: {exc}")

    mark = len(outside_mta.log_text())
    sender = threading.Thread(target=load, daemon=True)
    t0 = time.monotonic()
    sender.start()
    done = []
    for at, fault, args in _faults(ha):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        t = time.monotonic()
        what = fault(*args)
        done.append(f"{what} ({time.monotonic() - t:.0f}s)")
        log(f"faults: {what} at {t - t0:.0f}s")
    sender.join(SEND_SECONDS + 60)
    _expect(not sender.is_alive() and not errors, f"the outside Postfix refused mail: {errors[:3]}")
    t_faults = time.monotonic()
    wait_until(lambda: _queues_empty(roles), DRAIN_WITHIN, "every queue to empty after the faults")
    drained = time.monotonic() - t_faults
    wait_until(lambda: not _all_active(roles), 120, "every daemon back")

    stored: dict[str, list[str]] = {a: _mailbox(a, run) for a in RECIPIENTS}
    lost, dup, wrong = [], [], []
    for mid, to in sent.items():
        n = stored[to].count(mid)
        if n == 0:
            lost.append(mid)
        elif n > 1:
            dup.append(mid)
        for other in RECIPIENTS:
            if other != to and mid in stored[other]:
                wrong.append(mid)
    plog = outside_mta.log_text()[mark:]
    bounced = [line for line in plog.splitlines() if "status=bounced" in line]
    # What mx1 and mx2 answered the outside Postfix with, 5xx included.
    rejected = [line for line in plog.splitlines() if re.search(r"said: 5\d\d", line)]
    deferred = sum("status=deferred" in line for line in plog.splitlines())
    dropped = machines.sh("imap" if ha else "mx1",
                          f"journalctl -u dovecot --no-pager -o cat | grep -c 'msgid=<{run}-.*discard'").stdout.strip()
    _expect(not lost, f"{len(lost)} of {len(sent)} lost, e.g. {lost[:3]}")
    _expect(not wrong, f"{len(wrong)} in the wrong mailbox")
    _expect(not bounced and not rejected, f"5xx or bounce: {(bounced + rejected)[:3]}")
    _expect(not dup, f"{len(dup)} stored twice, e.g. {dup[:3]}")
    return (f"{len(sent)} messages through the outside Postfix under: {'; '.join(done)}. "
            f"0 lost, 0 stored twice, 0 5xx/bounces; {deferred} deferrals retried by Postfix; "
            f"{dropped or 0} redelivered copies dropped by Dovecot's dedupe; queues empty "
            f"{drained:.0f}s after the last fault; every daemon active")
