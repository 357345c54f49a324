"""The machinery of the fault scenarios (`faults.py`): a bounded stream of inbound mail
through the outside Postfix (MX look-up, its own queue and retries), faults run one after
the other at set times while it flows, and the verdict afterwards, by Message-ID: every
message in its mailbox exactly once, every copy scanned by Rspamd, nothing bounced or
refused with a 5xx, every queue empty and every daemon back by itself."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from mailstack import hosts as H
from mailstack import supervision

from .. import machines, outside_mta
from ..util import log, wait_until
from .clients import _expect, _imap_login_ok, _s, imap_session, machines_roles, via_outside

RECIPIENTS = ("alice@example.org", "bob@example.org", "carol@example.net")
DRAIN_WITHIN = 300  # after the last fault, for every queue to empty
BACK_WITHIN = 180  # for a killed daemon: Rspamd's restart can wait 90 s in the lab
# Rspamd's verdict: the Authentication-Results header it adds (cloud-init/rspamd/
# milter_headers.conf) through filter-rspamd on mx1, or on mx2 before it queues, with the
# MX host as authserv-id. smtpd's filter guard drops any such header naming our hosts that
# a message brings along (docs/hardening.md), so a copy that has one was scanned. (Ham
# gets no X-Spam-* header.)
VERDICT_HEADER = "Authentication-Results"


# ------------------------------------------------------------------ faults


def main_pid(role: str, unit: str) -> str:
    return machines.sh(role, f"systemctl show -p MainPID --value {unit}").stdout.strip()


def kill9(role: str, unit: str) -> str:
    """kill -9 of the unit's main process; returns once a new one is active."""
    pid = main_pid(role, unit)
    t = time.monotonic()
    machines.sh(role, f"kill -9 {pid}")

    def back() -> bool:
        return machines.sh(role, f"systemctl is-active --quiet {unit}").returncode == 0 and main_pid(
            role, unit
        ) not in ("", "0", pid)

    wait_until(back, BACK_WITHIN, f"{role}: {unit} back after kill -9")
    return f"kill -9 {unit.removesuffix('.service')} on {role}: back in {time.monotonic() - t:.0f}s"


def pg_stopped(role: str, seconds: int) -> str:
    # `systemctl stop` is an order, which the restart policy respects: it stays down.
    machines.sh(role, "systemctl stop postgresql@15-main")
    time.sleep(seconds)
    machines.sh(role, "systemctl start postgresql@15-main")
    what = "PostgreSQL" if role == "mx1" else "the replica"
    return f"{what} on {role} stopped {seconds}s"


def power_cycle(role: str) -> str:
    t = time.monotonic()
    machines.stop(role)  # a clean poweroff, while mail is being delivered to it
    machines.start(role)
    machines.wait_booted(role, 180)
    return f"{role} powered off and on: up in {time.monotonic() - t:.0f}s"


def queue_ids(role: str) -> set[str]:
    """The envelope IDs in a host's smtpd queue."""
    out = machines.sh(role, "smtpctl show queue", timeout=30).stdout
    return {line.split("|", 1)[0] for line in out.splitlines() if "|" in line}


def queues_empty(roles: list[str]) -> bool:
    return outside_mta.queue_empty() and all(
        machines.sh(r, "smtpctl show queue").stdout.strip() == "" for r in roles if r in ("mx1", "mx2")
    )


def all_active(roles: list[str]) -> list[str]:
    down = []
    for role in roles:
        for unit in supervision.units(H.hosts(_s())[role]):
            if machines.sh(role, f"systemctl is-active --quiet {unit}").returncode:
                down.append(f"{role}:{unit}")
    return down


# ------------------------------------------------------------------ the verdict


def scanned(header: bytes, domain: str) -> bool:
    """A verdict header from one of our MX hosts (names under `domain`) among these
    header fields."""
    ids = re.findall(rf"^{VERDICT_HEADER}:\s*([^;\s]+)".encode(), header, re.M | re.I)
    d = domain.lower().encode()
    return any(i.lower() == d or i.lower().endswith(b"." + d) for i in ids)


def mailbox(address: str, run: str) -> list[tuple[str, bool]]:
    """This run's copies in a user's INBOX: (Message-ID, carries Rspamd's verdict)."""
    with imap_session(address) as c:
        c.select("INBOX", readonly=True)
        typ, data = c.search(None, "SUBJECT", f'"{run}"')
        ids = data[0].split() if typ == "OK" and data[0] else []
        out = []
        for i in range(0, len(ids), 100):
            typ, got = c.fetch(
                b",".join(ids[i : i + 100]), f"(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID {VERDICT_HEADER.upper()})])"
            )
            for part in got:
                if isinstance(part, tuple):
                    m = re.search(rb"<([^>]+)>", part[1])
                    out.append((m.group(1).decode() if m else "", scanned(part[1], _s().host_domain)))
        return out


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    unscanned: list[str] = field(default_factory=list)


def judge(sent: dict[str, str], stored: dict[str, list[tuple[str, bool]]]) -> Verdict:
    """sent: Message-ID -> recipient; stored: recipient -> its copies (see mailbox())."""
    v = Verdict()
    for mid, to in sent.items():
        n = sum(m == mid for m, _ in stored[to])
        if n == 0:
            v.lost.append(mid)
        elif n > 1:
            v.twice.append(mid)
        if any(m == mid for other, got in stored.items() if other != to for m, _ in got):
            v.wrong.append(mid)
    v.unscanned = [m for got in stored.values() for m, scanned in got if not scanned]
    return v


def check(run: str, sent: dict[str, str]) -> Verdict:
    """Reads every recipient's INBOX and fails on any lost, doubled, misplaced or
    unscanned copy. Also usable by hand on a running lab (docs/lab.md)."""
    v = judge(sent, {a: mailbox(a, run) for a in RECIPIENTS})
    _expect(not v.lost, f"{len(v.lost)} of {len(sent)} lost, e.g. {v.lost[:3]}")
    _expect(not v.wrong, f"{len(v.wrong)} in the wrong mailbox, e.g. {v.wrong[:3]}")
    _expect(not v.twice, f"{len(v.twice)} stored twice, e.g. {v.twice[:3]}")
    _expect(not v.unscanned, f"{len(v.unscanned)} copies without Rspamd's {VERDICT_HEADER}, e.g. {v.unscanned[:3]}")
    return v


def notices(since: float) -> tuple[list[str], list[str]]:
    """Delivery status notifications our hosts sent the outside since then (each copy
    the outside Postfix stored, named by its arrival time): (bounces, delay warnings)."""
    bounces, delayed = [], []
    for p in sorted(outside_mta.spool().glob("*.eml")):
        try:
            if float(p.name.split("-", 1)[0]) < since:
                continue
        except ValueError:
            continue
        head = p.read_bytes()[:4000]
        if b"X-Lab-Mail-From: MAILER-DAEMON" not in head:
            continue
        subject = re.search(rb"^Subject: (.*)$", head, re.M)
        what = subject.group(1).decode(errors="replace").strip() if subject else p.name
        (delayed if "delayed" in what.lower() else bounces).append(what)
    return bounces, delayed


def _journal(role: str, unit: str, since: float, pattern: str) -> list[str]:
    r = machines.sh(role, f"journalctl -u {unit} --since @{int(since)} --no-pager -o cat | grep -E '{pattern}'")
    return r.stdout.splitlines()


# ------------------------------------------------------------------ the run


@dataclass
class Run:
    """One load with its faults, and the figures of the verdict."""

    messages: int
    seconds: float  # the load is spread over this long, so every fault meets it
    faults: list  # (seconds after the load starts, fault, its arguments)
    run: str = field(default_factory=lambda: "f" + time.strftime("%H%M%S"))
    sent: dict = field(default_factory=dict)  # Message-ID -> recipient
    done: list = field(default_factory=list)  # what each fault said

    def _load(self, errors: list[str]) -> None:
        t0 = time.monotonic()
        for i in range(self.messages):
            wait = t0 + i * self.seconds / self.messages - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            to = RECIPIENTS[i % len(RECIPIENTS)]
            token = f"{self.run}-{i}"
            try:
                via_outside(to, token)
                self.sent[f"{token}@outside.example.com"] = to
            except Exception as exc:  # the outside Postfix itself must take every one
                errors.append(f"{token}: {exc}")

    def __call__(self, name: str) -> str:
        roles = machines_roles()
        errors: list[str] = []
        mark = len(outside_mta.log_text())
        since = time.time()
        sender = threading.Thread(target=self._load, args=(errors,), daemon=True)
        t0 = time.monotonic()
        sender.start()
        for at, fault, args in self.faults:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            t = time.monotonic()
            what = fault(*args)
            self.done.append(f"{what} ({time.monotonic() - t:.0f}s)")
            log(f"{name}: {what} at {t - t0:.0f}s")
        sender.join(self.seconds + 60)
        _expect(not sender.is_alive() and not errors, f"the outside Postfix refused mail: {errors[:3]}")
        t_faults = time.monotonic()
        wait_until(lambda: queues_empty(roles), DRAIN_WITHIN, "every queue to empty after the faults", interval=2)
        drained = time.monotonic() - t_faults
        wait_until(lambda: not all_active(roles), 120, "every daemon back")
        # Dovecot's auth reconnects to its database with a growing back-off: after the
        # replica's stop, logins failed (temporarily) for a while after mail flowed again.
        t = time.monotonic()
        wait_until(lambda: all(_imap_login_ok(a) for a in RECIPIENTS), 180, "IMAP logins", interval=2)
        logins = time.monotonic() - t

        check(self.run, self.sent)
        plog = outside_mta.log_text()[mark:].splitlines()
        bounced = [line for line in plog if "status=bounced" in line]
        # What mx1 and mx2 answered the outside Postfix with, 5xx included.
        rejected = [line for line in plog if re.search(r"said: 5\d\d", line)]
        _expect(not bounced and not rejected, f"5xx or bounce: {(bounced + rejected)[:3]}")
        dsn_bounces, dsn_delayed = notices(since)
        _expect(not dsn_bounces, f"{len(dsn_bounces)} bounces came back to the sender: {dsn_bounces[:3]}")
        imap = "imap" if "imap" in roles else "mx1"
        # Behind mx1: a 5xx from Dovecot's LMTP (a lookup failure taken for an unknown
        # user) would not reach the outside Postfix, as smtpd keeps the mail on any
        # LMTP error; smtpd logs the reply with the failed delivery, and it is refused
        # here all the same. (Dovecot itself logs nothing for an unknown user.)
        lmtp_5xx = _journal("mx1", "opensmtpd", since, r"(PermFail|TempFail).* 5[0-9][0-9] ")
        _expect(not lmtp_5xx, f"a 5xx behind mx1: {lmtp_5xx[:3]}")
        deferred = sum("status=deferred" in line for line in plog)
        at_data = sum("status=deferred" in line and "end of DATA" in line for line in plog)
        via_mx2 = sum("status=sent" in line and "relay=mx2." in line for line in plog)
        dropped = len(_journal(imap, "dovecot", since, f"msgid=<{self.run}-.*discard"))
        return (
            f"{len(self.sent)} messages through the outside Postfix under: {'; '.join(self.done)}. "
            f"0 lost, 0 stored twice, 0 unscanned, 0 5xx/bounces; {deferred} deferrals retried "
            f"by Postfix ({at_data} at end of DATA), {via_mx2} sent to mx2; {dropped} "
            f"redelivered copies dropped by Dovecot's dedupe; queues empty {drained:.0f}s after "
            f"the last fault; every daemon active, IMAP logins {logins:.0f}s later; "
            f"{len(dsn_delayed)} 'delayed' warnings sent to the sender (docs/mail-flow.md)"
        )
