"""The hosts as a whole: which ports answer from where (firewall), a no-op redeploy that
changes nothing, and a reboot of every host after which mail flows again."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .. import machines, net
from ..util import wait_until
from .clients import (
    _expect,
    _host_can_connect,
    _host_ip,
    _port_open,
    _token,
    inbound,
    machines_roles,
    wait_imap,
)


def s_firewall() -> str:
    """(7) only intended ports answer from outside; LMTP/PG only between the right hosts."""
    roles = machines_roles()
    # 22 answers the lab's clients because they are in its admin.sshCidrs (lab/stack.yaml):
    # the host-<role> step narrows SSH in nftables, as the Hetzner firewall does in front.
    if roles == ["mx1"]:  # single: everything on one host
        want_open = {"mx1": [22, 25, 80, 443, 465, 587, 993, 4190]}
    else:
        want_open = {"mx1": [22, 25, 80, 443, 465, 587], "imap": [22, 80, 993, 4190], "mx2": [22, 25, 80]}
    closed = [24, 143, 5432, 6379, 10025, 11332, 11333, 11334]
    probes = []  # (role, port, should answer)
    for role in roles:
        probes += [(role, p, True) for p in want_open.get(role, [])]
        probes += [(role, p, False) for p in closed + sorted(
            {p for ps in want_open.values() for p in ps} - set(want_open.get(role, [])))]
    # In parallel: a dropped port costs the whole timeout, and there are dozens of them.
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda pr: _port_open(_host_ip(pr[0]), pr[1]), probes))
    for (role, p, want), answered in zip(probes, answers):
        if want and not answered:
            listening = machines.sh(role, f"ss -Hltn 'sport = :{p}'", timeout=20).stdout
            raise AssertionError(f"{role}:{p} does not answer from outside "
                                 f"(listening on the host: {listening.strip() or 'nothing'})")
        _expect(want or not answered, f"{role}:{p} answers from outside")
    # An address outside the admin networks (the stranger of the brute-force scenario) is
    # refused SSH.
    for role in roles:
        _expect(not _port_open(_host_ip(role), 22, source=net.ATTACK_V4),
                f"{role}:22 answers an address outside admin.sshCidrs")
    if "imap" in roles:
        ip_imap, ip_mx1 = "10.77.1.12", "10.77.1.11"
        _expect(_host_can_connect("mx1", ip_imap, 24), "mx1 cannot reach imap LMTP")
        _expect(not _host_can_connect("mx2", ip_imap, 24), "mx2 reaches imap LMTP")
        _expect(_host_can_connect("imap", ip_mx1, 5432), "imap cannot reach mx1 PostgreSQL")
        _expect(_host_can_connect("mx2", ip_mx1, 5432), "mx2 cannot reach mx1 PostgreSQL")
        _expect(_host_can_connect("mx2", ip_mx1, 10025), "mx2 cannot reach mx1's relay port")
        _expect(not _host_can_connect("imap", "10.77.1.13", 5432), "imap reaches mx2 PostgreSQL")
    if "imap" not in roles:
        return "outside: only mail/web/ssh ports (one host: no private flows)"
    return "outside: only mail/web/ssh ports; LMTP mx1->imap only; PG and relay port only from peers"


def _service_state(role: str) -> str:
    """Start times of the host's mail services and a checksum of their config files."""
    cmd = ("for u in opensmtpd rspamd redis-server dovecot nginx unbound postgresql@15-main; do "
           "systemctl show -p Id,ActiveEnterTimestamp,MainPID $u 2>/dev/null | tr '\\n' ' '; echo; done; "
           "find /etc/smtpd /etc/smtpd.conf /etc/rspamd/local.d /etc/dovecot /etc/nginx /etc/unbound "
           "/etc/postgresql /etc/mailstack /var/lib/rspamd/dkim -type f -exec sha256sum {} + 2>/dev/null "
           "| sort; stat -c '%n %a %U %G' /etc/smtpd/pgsql.conf /etc/dovecot/dovecot-sql.conf.ext 2>/dev/null")
    return machines.sh(role, cmd).stdout


def s_redeploy() -> str:
    """(extra) running every deploy step again with no change restarts and rewrites nothing."""
    roles = machines_roles()
    before = {r: _service_state(r) for r in roles}
    from ..stand import redeploy

    times = redeploy()
    after = {r: _service_state(r) for r in roles}
    for r in roles:
        if before[r] != after[r]:
            diff = [line for line in after[r].splitlines() if line not in before[r].splitlines()]
            raise AssertionError(f"{r} changed on a no-op redeploy: {diff[:4]}")
    return f"{len(times)} steps rerun in {sum(times.values()):.0f}s; no restart, no file changed"


def s_reboot() -> str:
    """(8) every host reboots and mail flows again."""
    for role in machines_roles():
        old = machines.leader(role)
        machines.sh(role, "systemctl reboot")
        wait_until(lambda: machines.leader(role) != old, 120, f"{role} to restart")
        machines.wait_booted(role, 180)
    wait_until(lambda: _port_open(_host_ip("mx1"), 25), 120, "mx1:25 after reboot")
    tok = _token()
    wait_until(lambda: (inbound("alice@example.org", tok) or True), 120, "mx1 to accept mail")
    wait_imap("alice@example.org", tok, timeout=120)
    return "all hosts rebooted; inbound delivery and IMAPS work"
