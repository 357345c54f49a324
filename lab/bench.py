"""`make bench`: figures from one run on the lab, printed, never judged (timings on a
shared 2-core machine vary too much to assert; docs/performance.md keeps the numbers and
compares them with the goals).

- load: concurrent SMTP senders (`bench_sender.py`: one connection each, STARTTLS, the
  messages one after another) on two paths to the same mailbox, 10 and then 20 senders:
  the full pipeline (from the outside MTA's address to mx1:25, every connect filter and
  Rspamd, LMTP to imap, Dovecot's Sieve) and the bare path (from mx2 to mx1's relay port:
  no filter, the same LMTP and Dovecot). Per message: the time to smtpd's 250 and to the
  file in the Maildir (its name holds Dovecot's delivery time; the hosts share this
  machine's clock). Throughput is messages / (last delivery - first send); the ratio is
  full / bare at the same concurrency;
- mx2's backlog: mx2 queues M messages while mx1's smtpd is stopped, then the time from
  smtpd's start until mx2's queue is empty, and how often smtpd held envelopes ("hiwat");
- recovery: kill -9 of smtpd on mx1 and of Dovecot, until port 25 / ManageSieve's 4190
  greet again;
- the phases of the last `lab up` (boot to mail-ready per host among them).

Uses a running lab if there is one (`make lab-up`), otherwise brings one up and takes it
down again (and times that too). Every loop is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailstack import hosts as H
from mailstack import smtpd

from . import config, internet, machines, net, outside_mta
from .netns import inside
from .util import NETNS, STATE, log, run, wait_until

CONCURRENCY = (10, 20)
PER_SENDER = 10
BACKLOG_MESSAGES = 200
RCPT = "alice@example.org"
MAILDIR = "/var/vmail/example.org/alice/Maildir"
SENDER = Path(__file__).with_name("bench_sender.py")

# Dovecot names a Maildir file <seconds>.M<microseconds>P<pid>...: its delivery time.
MAILDIR_TIMES = r"""
import json, os, re, sys
run, base, out = sys.argv[1], sys.argv[2], {}
pat = re.compile(rb"^Message-ID: (<" + re.escape(run).encode() + rb"-[^>]*>)", re.M | re.I)
for top, dirs, files in os.walk(base):
    if os.path.basename(top) not in ("new", "cur"):
        continue
    for f in files:
        m = re.match(r"(\d+)\.M(\d+)P", f)
        if not m:
            continue
        try:
            with open(os.path.join(top, f), "rb") as fh:
                mm = pat.search(fh.read(16384))
        except OSError:
            continue
        if mm:
            out[mm.group(1).decode()] = int(m.group(1)) + int(m.group(2)) / 1e6
print(json.dumps(out))
"""


def _imap_role() -> str:
    return "imap" if "imap" in _roles() else "mx1"


def _delivered(run_id: str) -> dict[str, float]:
    r = machines.exec_in(_imap_role(), ["python3", "-c", MAILDIR_TIMES, run_id, MAILDIR], timeout=120)
    return json.loads(r.stdout or "{}")


def _load(path: str, senders: int) -> list[list]:
    """One run of bench_sender.py on `path` ("full" or "bare"); the messages' rows."""
    s = config.running_settings()
    run_id = f"{path}{senders}-{time.strftime('%H%M%S')}"
    args = {"senders": senders, "per_sender": PER_SENDER, "rcpt": RCPT, "run": run_id}
    if path == "full":
        args.update(
            ip=net.public_v4("mx1"),
            port=25,
            name=s.fqdn("mx1"),
            source=net.OUTSIDE_V4,
            helo=internet.OUTSIDE_MX,
            cafile=str(STATE / "tls" / "pebble-roots.pem"),
            mail_from=f"sender@{outside_mta.DOMAIN}",
        )
        r = run(
            ["ip", "netns", "exec", NETNS, sys.executable, "-", json.dumps(args)],
            input=SENDER.read_text(),
            capture=True,
            timeout=900,
        )
    else:
        hs = H.hosts(s)
        args.update(
            ip=hs["mx1"].private_ip,
            port=smtpd.RELAY_PORT,
            name=s.fqdn("mx1"),
            source=None,
            helo=s.fqdn("mx2"),
            cafile=None,
            mail_from=f"sender@{outside_mta.DOMAIN}",
        )
        r = machines.exec_in(
            "mx2", ["python3", "-", json.dumps(args)], input=SENDER.read_text(), timeout=900, check=True
        )
    rows = json.loads(r.stdout)
    errors = [row[3] for row in rows if row[3]]
    if errors:
        log(f"bench: {path} x{senders}: {len(errors)} not accepted, e.g. {errors[0]}")
    accepted = [row for row in rows if row[2] is not None]
    want = {row[0] for row in accepted}
    wait_until(
        lambda: want <= set(_delivered(run_id)), 600, f"{len(want)} {path}-path messages in the mailbox", interval=2
    )
    at = _delivered(run_id)
    return [row + [at[row[0]]] for row in accepted]


def _quantile(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) >= 2 else (xs or [0.0])[0]


def load() -> dict[str, float]:
    out: dict[str, float] = {}
    if "mx2" not in _roles():
        log("bench: the bare path needs mx2 (ha topology); only the full path is measured")
    for senders in CONCURRENCY:
        rate = {}
        for path in ("full", "bare") if "mx2" in _roles() else ("full",):
            rows = _load(path, senders)
            t0 = min(r[1] for r in rows)
            rate[path] = len(rows) / (max(r[4] for r in rows) - t0)
            tag = f"{path} x{senders}"
            out[f"{tag}: messages delivered per second ({len(rows)} messages)"] = rate[path]
            if path == "full":
                out[f"{tag}: mx1 accepted per second (250 after DATA)"] = len(rows) / (max(r[2] for r in rows) - t0)
            lat = [r[4] - r[1] for r in rows]
            acc = [r[2] - r[1] for r in rows]
            out[f"{tag}: delivery latency p50 (s, send to Maildir)"] = _quantile(lat, 50)
            out[f"{tag}: delivery latency p99 (s)"] = _quantile(lat, 99)
            out[f"{tag}: accept latency p50 (s, send to 250)"] = _quantile(acc, 50)
            out[f"{tag}: accept latency p99 (s)"] = _quantile(acc, 99)
        if "bare" in rate:
            out[f"ratio full / bare at {senders} senders"] = rate["full"] / rate["bare"]
    return out


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
        time.sleep(20)  # mx2 has tried mx1 and met a closed port, as in an outage
    finally:
        machines.sh("mx1", "systemctl start opensmtpd")
    t0 = time.monotonic()
    wait_until(
        lambda: machines.sh("mx2", "smtpctl show queue").stdout.strip() == "", 900, "mx2's queue to drain", interval=1
    )
    dt = time.monotonic() - t0
    holds = machines.sh(
        "mx2", f"journalctl --since @{since} -u opensmtpd --no-pager -o cat | grep -c 'hiwat reached'"
    ).stdout.strip()
    return {
        f"mx2 backlog of {n} drained after mx1's smtpd started (s)": dt,
        "  relayed per second": n / dt,
        "  'hiwat reached' holds": float(holds or 0),
    }


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


PARTS = ("load", "mx2_drain", "recovery")


def goals(f: dict[str, float]) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for the goals of docs/performance.md; printed only."""
    rows = []

    def row(goal: str, value: float | None, ok: bool | None, shown: str) -> None:
        rows.append(
            (
                goal,
                shown if value is not None else "not measured",
                "" if ok is None or value is None else "met" if ok else "missed",
            )
        )

    for n in CONCURRENCY:
        v = f.get(f"ratio full / bare at {n} senders")
        row(f"full / bare >= 0.6 ({n} senders)", v, v is not None and v >= 0.6, f"{v or 0:.2f}")
    v = f.get(f"full x{CONCURRENCY[-1]}: delivery latency p99 (s)")
    row(f"p99 delivery <= 1 s at {CONCURRENCY[-1]} senders", v, v is not None and v <= 1, f"{v or 0:.2f} s")
    drain = next((v for k, v in f.items() if k.endswith("relayed per second")), None)
    accept = max((v for k, v in f.items() if k.startswith("full x") and "accepted per second" in k), default=None)
    row(
        "mx2 drains as fast as mx1 accepts",
        drain if accept else None,
        drain is not None and accept is not None and drain >= accept,
        f"{drain or 0:.1f}/s drained vs {accept or 0:.1f}/s accepted",
    )
    for k, v in f.items():
        if k.endswith("boot-to-mail-ready"):
            role = k.split()[-2]
            row(f"boot to mail-ready <= 90 s ({role})", v, v <= 90, f"{v:.0f} s")
    v = f.get("lab up: lab up total")
    row("`make lab` warm <= 4 min (here: `lab up` alone)", v, v is not None and v <= 240, f"{v or 0:.0f} s")
    return rows


def main(only: list[str] | None = None) -> int:
    from . import stand

    own = not (STATE / "roles.json").exists()
    figures: dict[str, float] = {}
    try:
        if own:
            log("bench: no running lab, bringing one up")
            stand.up()
        try:
            figures.update({f"lab up: {k.strip()}": v for k, v in json.loads(stand.TIMINGS_FILE.read_text()).items()})
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
            t = time.monotonic()
            stand.down()
            figures["lab down (s)"] = time.monotonic() - t
    print(f"\n{'figure':<66} {'value':>8}")
    for k, v in figures.items():
        print(f"  {k:<64} {v:8.2f}")
    print(f"\n{'goal':<50} {'measured':<36} verdict")
    for goal, shown, verdict in goals(figures):
        print(f"  {goal:<48} {shown:<36} {verdict}")
    try:
        load_avg = Path("/proc/loadavg").read_text().split()[:3]
        print(f"\nload average at the end: {' '.join(load_avg)} on {len(os.sched_getaffinity(0))} cores")
    except OSError:
        pass
    return 0
