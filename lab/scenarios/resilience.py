"""Resilience scenarios: hostile input from the outside leaves every listener up, and
every daemon comes back by itself after kill -9 or a clean exit of its own."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mailstack import fail2ban, firewall, postgresql, redis, smtpd, supervision
from mailstack import hosts as H

from .. import config, hostile_cases, internet, machines, net
from ..netns import inside
from ..util import NETNS, wait_until
from .clients import (
    LabSMTP,
    _expect,
    _host_ip,
    _imap_role,
    _port_open,
    _s,
    _token,
    inbound,
    machines_roles,
    wait_imap,
)

# IMAP and ManageSieve failures from the outside MTA's address would earn it Dovecot's
# auth penalty for the scenarios after this one: they come from an address of their own.
HOSTILE_SRC = f"{net.PUB4_PREFIX}.66"
USER = "alice@example.org"


def _sample(batches: dict[str, list[dict]], every: int) -> list[dict]:
    """Every n-th session of each batch, and the one that once took mx1 off the air."""
    out = [s for sessions in batches.values() for s in sessions[::every]]
    return out + [hostile_cases.PIPE_IN_FAILED_LOGIN]


def _client(script: str, payload: dict, timeout: float = 600) -> dict:
    r = subprocess.run(
        ["ip", "netns", "exec", NETNS, sys.executable, "-c", script],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    _expect(r.returncode == 0, f"hostile client failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def _public_ports(role: str) -> list[int]:
    host = H.hosts(_s())[role]
    return sorted({p for svc in host.services for _, p, _ in firewall.PUBLIC.get(svc, ())})


def _all_ports_answer(after: str, timeout: float = 0) -> list[str]:
    """Every host's public ports answer (within timeout: a daemon may be restarting)."""

    def closed() -> list[str]:
        return [
            f"{role}:{port}"
            for role in machines_roles()
            for port in _public_ports(role)
            if not _port_open(_host_ip(role), port)
        ]

    if timeout:
        try:
            wait_until(lambda: not closed(), timeout, f"every port to answer after {after}")
        except TimeoutError:
            pass
    still = closed()
    _expect(not still, f"not answering after {after}: {still}")
    return [f"{role}:{','.join(map(str, _public_ports(role)))}" for role in machines_roles()]


def s_hostile_input() -> str:
    """(7) a sample of the hostile-input suite from outside against mx1, mx2 and imap;
    every port still answers and mail still flows."""
    smtp = _sample(hostile_cases.SMTP_BATCHES, 8)
    imap = _sample_imap()
    pw = config.password(USER)
    counts = []
    subprocess.run(["ip", "-n", NETNS, "addr", "add", f"{HOSTILE_SRC}/24", "dev", net.PUB_BRIDGE], check=True)
    try:
        for role in [r for r in ("mx1", "mx2") if r in machines_roles()]:
            sessions = [s for s in smtp if s["src"] == "ok"]
            if not H.hosts(_s())[role].runs(H.SUBMISSION):
                sessions = [s for s in sessions if s["port"] == 25]
            out = _client(
                hostile_cases.SMTP_CLIENT,
                dict(
                    server=_host_ip(role),
                    sessions=sessions,
                    src=net.OUTSIDE_V4,
                    pipe_src=net.OUTSIDE_V4,
                    user=USER,
                    password=pw,
                ),
            )
            counts.append(f"{role} {out['ran']} SMTP sessions")
        out = _client(
            hostile_cases.IMAP_CLIENT,
            dict(
                host=_host_ip(_imap_role()),
                imaps_port=993,
                sieve_port=4190,
                sessions=imap,
                src=HOSTILE_SRC,
                user=USER,
                password=pw,
            ),
        )
        counts.append(f"{_imap_role()} {out['ran']} IMAP/ManageSieve sessions")
    finally:
        subprocess.run(["ip", "-n", NETNS, "addr", "del", f"{HOSTILE_SRC}/24", "dev", net.PUB_BRIDGE], check=False)
    ports = _all_ports_answer("hostile input")
    health = _client(
        hostile_cases.HEALTH_CLIENT, dict(server=_host_ip("mx1"), ports=[], src=net.OUTSIDE_V4, user=USER, password=pw)
    )
    _expect(health.get("auth") == 235 and health.get("delivered") == 250, f"submission after hostile input: {health}")
    tok = _token()
    inbound(USER, tok)
    wait_imap(USER, tok)
    return f"{', '.join(counts)}; all ports answer ({' '.join(ports)}); login, submission and inbound work"


def _sample_imap() -> list[dict]:
    return [s for sessions in hostile_cases.IMAP_BATCHES.values() for s in sessions[::6]]


# ------------------------------------------------------------------ supervision

# How each daemon can be stopped cleanly from inside, without systemctl (which would be
# an operator's stop, rightly left alone): each exits with status 0.
CLEAN_EXIT = {
    "opensmtpd.service": "kill -TERM $MAINPID",  # 7.4 has no `smtpctl stop`
    "dovecot.service": "doveadm stop",
    postgresql.PG_UNIT: f"runuser -u postgres -- /usr/lib/postgresql/{postgresql.PG_VERSION}/bin/pg_ctl "
    f"stop -D {postgresql.PG_DATA} -m fast",
    "rspamd.service": "kill -TERM $MAINPID",
    redis.UNIT: f"{redis.CLI} shutdown",  # it wants the password (redis.py)
    "unbound.service": "kill -TERM $MAINPID",
    "nginx.service": "nginx -s quit",
    fail2ban.UNIT: "fail2ban-client stop",
}
# smtpd's helper processes (as `pgrep -f` sees them; table-postgres renames itself):
# when one dies, smtpd exits, and must come back with them.
SMTPD_CHILDREN = ("filter-rspamd", "filter-senderscore", f"pgsql {smtpd.TABLE_CONF}")


def _show(role: str, unit: str) -> dict[str, str]:
    out = machines.sh(role, f"systemctl show -p MainPID -p ActiveState -p NRestarts {unit}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# On a server the new process starts RestartSec after the old one ended. In the lab (a
# cgroup v1 machine) systemd inside a container cannot kill a unit's control group
# ("Input/output error"): after kill -9 of a main process whose workers don't follow it
# (Rspamd's), the restart waits for TimeoutStopSec (90 s) before it kills them one by one.
BACK_WITHIN = 180


def _back(role: str, unit: str, old_pid: str, what: str) -> None:
    def up() -> bool:
        st = _show(role, unit)
        return st.get("ActiveState") == "active" and st.get("MainPID") not in ("0", old_pid, None)

    wait_until(up, BACK_WITHIN, f"{role}: {unit} back after {what}")


def _rcpt_probe(role: str) -> None:
    """One recipient look-up on the host's port 25, from outside; its outcome is ignored."""
    try:
        with inside(), LabSMTP(_s().fqdn(role), _host_ip(role), 25, timeout=10) as c:
            c.ehlo()
            c.mail(f"probe@{internet.OUTSIDE_DOMAIN}")
            c.rcpt(USER)
    except (OSError, smtplib.SMTPException):
        pass


def _ask_to_exit(role: str, unit: str, pid: str) -> None:
    """The unit's clean exit, asked again until the daemon takes it: one restarted a
    moment ago may not answer its control channel yet (fail2ban-client finds no socket
    while fail2ban-server still reads its jails), and then nothing would end it."""
    cmd = CLEAN_EXIT[unit].replace("$MAINPID", pid)
    wait_until(lambda: machines.sh(role, cmd, timeout=30).returncode == 0, 60, f"{role}: {unit} to take `{cmd}`")


def _supervise_host(role: str) -> list[str]:
    host = H.hosts(_s())[role]
    notes = []
    for unit in supervision.units(host):
        before = _show(role, unit)
        pid = before["MainPID"]
        _expect(pid != "0", f"{role}: {unit} is not running at the start")
        machines.sh(role, f"kill -9 {pid}")
        _back(role, unit, pid, "kill -9")
        pid = _show(role, unit)["MainPID"]
        _ask_to_exit(role, unit, pid)
        _back(role, unit, pid, "a clean exit")
        after = _show(role, unit)
        restarts = int(after["NRestarts"]) - int(before["NRestarts"])
        _expect(restarts >= 2, f"{role}: {unit} restarted {restarts} times (want 2)")
        log = machines.sh(role, f"journalctl -u {unit} --no-pager -o cat | grep -c 'Scheduled restart job'").stdout
        _expect(int(log.strip() or 0) >= 2, f"{role}: no restart record in {unit}'s journal")
        notes.append(unit.removesuffix(".service"))
    if host.runs(H.MX) or host.runs(H.BACKUP_MX):
        for child in SMTPD_CHILDREN:
            # smtpd starts its helpers a moment after it starts itself.
            wait_until(
                lambda: machines.sh(role, f"pgrep -f '{child}'").returncode == 0, 30, f"{role}: a {child} process"
            )
            pid = _show(role, "opensmtpd.service")["MainPID"]
            machines.sh(role, f"pkill -9 -f '{child}'")
            if child.startswith("pgsql"):
                # smtpd notices a dead table process at its next lookup: it drops that
                # session (the sender retries later), exits, and is restarted.
                _rcpt_probe(role)
            _back(role, "opensmtpd.service", pid, f"kill -9 of {child}")
            notes.append(f"smtpd after {child}")
    return notes


def s_supervision() -> str:
    """(7) every daemon on every host comes back by itself after kill -9 and after a
    clean exit of its own, with a record in its journal; then mail flows."""
    roles = machines_roles()
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(roles)) as pool:
        results = dict(zip(roles, pool.map(_supervise_host, roles)))
    # Every public port answers again, and mail goes through every host.
    _all_ports_answer("the restarts", timeout=60)
    wait_until(lambda: not machines.sh("mx1", "systemctl is-active --quiet opensmtpd").returncode, 60, "mx1's smtpd")
    tok = _token()
    wait_until(lambda: inbound(USER, tok) or True, 60, "mx1 to accept mail")
    wait_imap(USER, tok, timeout=90)
    return (
        f"{sum(len(v) for v in results.values())} daemons killed and stopped, all back "
        f"in {time.monotonic() - t0:.0f}s: " + "; ".join(f"{r}: {', '.join(v)}" for r, v in results.items())
    )
