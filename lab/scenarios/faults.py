"""Faults under load: a bounded stream of inbound mail goes through the outside Postfix
(MX look-up, its own queue and retries) while daemons are killed and hosts switched off,
and afterwards every message is in its mailbox exactly once and scanned by Rspamd,
nothing bounced, every queue is empty and every daemon is back by itself (`load.py`).

Two scenarios keep each one bounded: `faults` (daemons on a running stack, Rspamd
included, imap's power cycle, both databases) and `faults-hosts` (mx1 off with mx2
queueing, mx2 rebooted with that queue), the slow set (docs/lab.md)."""

from __future__ import annotations

import time

from .. import machines
from ..util import wait_until
from .clients import _expect, machines_roles
from .load import Run, kill9, pg_stopped, power_cycle, queue_ids

# faults: 200 messages over 140 s, so that each of the six faults meets mail in flight.
MESSAGES = 200
SEND_SECONDS = 140
# faults-hosts: mx2 holds at least this many messages when it is rebooted.
MX2_QUEUE = 50
HOSTS_MESSAGES = 200
HOSTS_SECONDS = 100


def _faults(ha: bool) -> list[tuple[float, object, tuple]]:
    """(seconds after the load starts, fault, its arguments), run one after the other."""
    imap = "imap" if ha else "mx1"
    out = [
        (8, kill9, ("mx1", "opensmtpd.service")),
        (20, kill9, (imap, "dovecot.service")),
        (32, power_cycle, (imap,)) if ha else (32, kill9, ("mx1", "opensmtpd.service")),
        # Rspamd gone: the rspamd filter answers 4xx at the end of DATA and the outside
        # Postfix retries; no copy may reach a mailbox without Rspamd's verdict.
        (62, kill9, ("mx1", "rspamd.service")),
        (70, pg_stopped, ("mx1", 30)),
    ]
    if ha:
        # Dovecot's lookups fail: LMTP must answer 4xx (451), never 550 (docs/mail-flow.md).
        out.append((105, pg_stopped, ("imap", 30)))
    return out


def s_faults() -> str:
    """(extra) 200 messages through the outside Postfix while smtpd, Dovecot and Rspamd
    are killed, imap is powered off and on, and mx1's PostgreSQL and imap's replica are
    stopped: none lost, none bounced, none stored twice, every daemon back by itself."""
    return Run(MESSAGES, SEND_SECONDS, _faults("imap" in machines_roles()))("faults")


# ------------------------------------------------------------------ faults-hosts


def _mx1_off() -> str:
    machines.stop("mx1")
    return "mx1 powered off"


def _mx2_fills(n: int) -> str:
    """Waits until the outside Postfix, finding MX 10 dark, has given mx2 n messages."""
    t = time.monotonic()
    wait_until(lambda: len(queue_ids("mx2")) >= n, 120, f"{n} messages in mx2's queue", interval=2)
    return f"mx2 queued {n} in {time.monotonic() - t:.0f}s"


def _mx2_reboot() -> str:
    """A clean reboot of mx2 holding its queue (mx1 still off): the queue must survive."""
    before = queue_ids("mx2")
    old = machines.leader("mx2")
    t = time.monotonic()
    machines.sh("mx2", "systemctl reboot")
    wait_until(lambda: machines.leader("mx2") != old, 120, "mx2 to go down")
    machines.wait_booted("mx2", 180)
    wait_until(lambda: machines.sh("mx2", "systemctl is-active --quiet opensmtpd").returncode == 0, 120, "mx2's smtpd")
    after = queue_ids("mx2")
    kept = len(before & after)
    _expect(kept == len(before), f"mx2's queue lost {len(before) - kept} of {len(before)} in the reboot")
    return f"mx2 rebooted with {len(before)} queued: all {kept} kept, up in {time.monotonic() - t:.0f}s"


def _mx1_on() -> str:
    """mx1 powered on; mx2's flush timer alone relays the backlog."""
    t = time.monotonic()
    machines.start("mx1")
    machines.wait_booted("mx1", 180)
    booted = time.monotonic() - t
    wait_until(lambda: not queue_ids("mx2"), 240, "mx2's queue to drain into mx1", interval=2)
    return f"mx1 powered on: up in {booted:.0f}s, mx2's queue empty {time.monotonic() - t:.0f}s after power-on"


def _hosts_faults() -> list[tuple[float, object, tuple]]:
    return [
        (5, _mx1_off, ()),
        (5, _mx2_fills, (MX2_QUEUE,)),
        (5, _mx2_reboot, ()),
        (5, _mx1_on, ()),
    ]


def s_faults_hosts() -> str:
    """(extra, slow) 200 messages through the outside Postfix while mx1 is off (MX 20,
    mx2, queues), mx2 is rebooted with 50 queued and mx1 comes back: none lost or
    doubled, every copy scanned, mx2's queue survives the reboot and drains."""
    if "mx2" not in machines_roles():
        return "skipped: single topology"
    return Run(HOSTS_MESSAGES, HOSTS_SECONDS, _hosts_faults())("faults-hosts")
