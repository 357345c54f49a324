"""`make bench`: figures from one run on the lab, printed, never judged (timings on a
shared 2-core machine vary too much to assert; docs/performance.md keeps the numbers).

- throughput: N messages handed to the outside Postfix at once, until all are in their
  mailboxes (outside -> MX look-up -> mx1:25 with every filter -> LMTP -> Maildir), and the
  outside Postfix's own delay per message (until mx1 answered 250), p50 and p99;
- mx2's backlog: mx2 queues M messages while mx1's smtpd is stopped, then the time from
  smtpd's start until mx2's queue is empty, and how often smtpd held envelopes ("hiwat");
- recovery: kill -9 of smtpd on mx1 and of Dovecot, until port 25 / ManageSieve's 4190
  greet again;
- the phases of the last `lab up`.

Uses a running lab if there is one (`make lab-up`), otherwise brings one up and takes it
down again. Every loop is bounded.
"""
from __future__ import annotations

import json
import re
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from . import machines, net, outside_mta
from .netns import inside
from .util import STATE, log, wait_until

THROUGHPUT_MESSAGES = 100
BACKLOG_MESSAGES = 200
RCPT = "alice@example.org"


def _delivered(run: str) -> int:
    from .scenarios.clients import imap_count
    return imap_count(RCPT, run)


def throughput(n: int = THROUGHPUT_MESSAGES) -> dict[str, float]:
    from .scenarios.clients import via_outside
    run = "b" + time.strftime("%H%M%S")
    mark = len(outside_mta.log_text())
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: via_outside(RCPT, f"{run}-{i}"), range(n)))
    wait_until(lambda: _delivered(run) >= n, 600, f"{n} messages in the mailbox", interval=2)
    dt = time.monotonic() - t0
    delays = [float(m.group(1)) for m in re.finditer(r"to=<[^>]+>, relay=mx\S+, delay=([\d.]+)",
                                                      outside_mta.log_text()[mark:])]
    q = statistics.quantiles(delays, n=100) if len(delays) >= 2 else [0.0] * 99
    return {f"{n} messages outside -> mailbox (s)": dt, "  mailbox deliveries per second": n / dt,
            "  outside Postfix delay p50 (s)": q[49], "  outside Postfix delay p99 (s)": q[98]}


def _send_to_mx2(n: int) -> None:
    from .scenarios.clients import LabSMTP, _s, message
    s = _s()

    def batch(idx: list[int]) -> None:
        with inside():
            with LabSMTP(s.fqdn("mx2"), net.public_v4("mx2"), 25, timeout=60) as c:
                for i in idx:
                    c.send_message(message(f"sender@{outside_mta.DOMAIN}", RCPT, f"{run}-{i}"))
    run = "m" + time.strftime("%H%M%S")
    chunks = [list(range(i, n, 4)) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(batch, chunks))


def mx2_drain(n: int = BACKLOG_MESSAGES) -> dict[str, float]:
    """mx1's smtpd stopped (an order: its restart policy leaves it down) while mx2 takes n
    messages and fails to relay them, as when mx1 is off; then smtpd started again, and
    the time from there until mx2's queue is empty, with no manual flush."""
    if "mx2" not in _roles():
        return {}
    since = machines.sh("mx2", "date +%s").stdout.strip()
    machines.sh("mx1", "systemctl stop opensmtpd")
    try:
        _send_to_mx2(n)
        queued = lambda: machines.sh("mx2", "smtpctl show queue | wc -l").stdout.strip()  # noqa: E731
        wait_until(lambda: int(queued()) >= n, 120, f"{n} messages in mx2's queue")
        time.sleep(20)   # mx2 has tried mx1 and met a closed port, as in an outage
    finally:
        machines.sh("mx1", "systemctl start opensmtpd")
    t0 = time.monotonic()
    wait_until(lambda: machines.sh("mx2", "smtpctl show queue").stdout.strip() == "", 900,
               "mx2's queue to drain", interval=1)
    dt = time.monotonic() - t0
    holds = machines.sh("mx2", f"journalctl --since @{since} -u opensmtpd --no-pager -o cat "
                               "| grep -c 'hiwat reached'").stdout.strip()
    return {f"mx2 backlog of {n} drained after mx1's smtpd started (s)": dt,
            "  relayed per second": n / dt, "  'hiwat reached' holds": float(holds or 0)}


def _answers(ip: str, port: int) -> bool:
    with inside():
        try:
            with socket.create_connection((ip, port), 1) as c:
                return c.recv(4) != b""
        except OSError:
            return False


def recovery() -> dict[str, float]:
    out = {}
    imap = "imap" if "imap" in _roles() else "mx1"
    for role, unit, port in (("mx1", "opensmtpd.service", 25), (imap, "dovecot.service", 4190)):
        pid = machines.sh(role, f"systemctl show -p MainPID --value {unit}").stdout.strip()
        t0 = time.monotonic()
        machines.sh(role, f"kill -9 {pid}")
        wait_until(lambda: not _answers(net.public_v4(role), port), 10, f"{unit} to go", interval=0.1)
        wait_until(lambda: _answers(net.public_v4(role), port), 300, f"{unit} back", interval=0.2)
        out[f"kill -9 {unit.removesuffix('.service')} on {role} -> :{port} answers (s)"] = time.monotonic() - t0
    return out


def _roles() -> list[str]:
    try:
        return json.loads((STATE / "roles.json").read_text())
    except (OSError, ValueError):
        return []


PARTS = ("throughput", "mx2_drain", "recovery")


def main(only: list[str] | None = None) -> int:
    from . import stand
    own = not (STATE / "roles.json").exists()
    figures: dict[str, float] = {}
    try:
        if own:
            log("bench: no running lab, bringing one up")
            stand.up()
        try:
            figures.update({f"lab up: {k}": v for k, v in
                            json.loads(stand.TIMINGS_FILE.read_text()).items()})
        except (OSError, ValueError):
            pass
        for part in (globals()[p] for p in PARTS if not only or p in only):
            log(f"bench: {part.__name__}")
            try:
                figures.update(part())
            except Exception as exc:  # one failed measurement must not hide the others
                log(f"bench: {part.__name__} failed: {type(exc).__name__}: {exc}")
    finally:
        if own:
            stand.down()
    print("\nfigure                                                          value")
    for k, v in figures.items():
        print(f"  {k:<60} {v:8.1f}")
    return 0
