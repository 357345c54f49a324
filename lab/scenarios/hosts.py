"""The hosts as a whole: which ports answer from where (firewall: the exact matrix from
outside, at both layers, the Hetzner firewall at the lab's edge (lab/net.py `edge_up`) and
each host's own nftables, over IPv4 and IPv6, from an admin address and from a stranger's;
and the private flows), a no-op redeploy that changes nothing, and a reboot of every host
after which mail flows again."""

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

# The specification, written out rather than derived from mailstack/firewall.py: what a
# client on the internet may reach on each host (SSH only from admin.sshCidrs).
HA_OPEN = {"mx1": [25, 80, 443, 465, 587], "imap": [80, 993, 4190], "mx2": [25, 80]}
SINGLE_OPEN = {"mx1": [25, 80, 443, 465, 587, 993, 4190]}
SSH = 22
# Never public: LMTP, IMAP without TLS, PostgreSQL, Redis, the relay port, Rspamd's
# workers and controller, and a port nothing uses.
NEVER = [24, 143, 5432, 6379, 10025, 11332, 11333, 11334, 8080]
# (source v4, source v6, gets SSH): the lab's clients sit inside admin.sshCidrs
# (lab/stack.yaml); the stranger of the brute-force scenario outside.
SOURCES = {"admin": (net.OUTSIDE_V4, net.OUTSIDE_V6, True), "stranger": (net.ATTACK_V4, net.ATTACK_V6, False)}
TIMEOUT = 2  # a dropped probe waits this long; an open port answers in milliseconds


def _matrix(roles: list[str]) -> dict[tuple[str, str, int], bool]:
    """(source, destination, port) -> should it answer."""
    spec = SINGLE_OPEN if roles == ["mx1"] else HA_OPEN
    ports = sorted({p for ps in spec.values() for p in ps} | {SSH} | set(NEVER))
    want = {}
    for role in roles:
        for v4, v6, ssh in SOURCES.values():
            for src, dst in ((v4, net.public_v4(role)), (v6, net.public_v6(role))):
                for p in ports:
                    want[(src, dst, p)] = p in spec[role] or (p == SSH and ssh)
    return want


def _name(probe: tuple[str, str, int]) -> str:
    src, dst, port = probe
    role = next(r for r in net.HOST_NUM if dst in (net.public_v4(r), net.public_v6(r)))
    who = next(k for k, (v4, v6, _) in SOURCES.items() if src in (v4, v6))
    return f"{role}:{port} from the {who} ({src} -> {dst})"


def s_firewall() -> str:
    """(7) the exact matrix from outside, v4 and v6, SSH only from admin.sshCidrs, the
    rest dropped at the edge; LMTP/PG/relay only between the right hosts."""
    roles = machines_roles()
    want = _matrix(roles)
    dropped_before = {r: net.edge_dropped(r) for r in roles}
    # A tap behind the edge records which SYNs got through it: what reaches a host's link.
    net.tap_start()
    try:
        # In parallel: a dropped port costs the whole timeout, and there are hundreds.
        with ThreadPoolExecutor(max_workers=48) as pool:
            answers = dict(zip(want, pool.map(lambda pr: _port_open(pr[1], pr[2], TIMEOUT, source=pr[0]), want)))
        seen = net.tap_seen()
    finally:
        net.tap_stop()
    for pr, should in want.items():
        if should and not answers[pr]:
            role = _name(pr).split(":")[0]
            listening = machines.sh(role, f"ss -Hltn 'sport = :{pr[2]}'", timeout=20).stdout
            raise AssertionError(
                f"{_name(pr)} does not answer (listening on the host: {listening.strip() or 'nothing'})"
            )
        _expect(should or not answers[pr], f"{_name(pr)} answers")
    # The edge alone lets through exactly the open cells: every other SYN stopped in front
    # of the host (another client's SYN to an open port may pass too: only the probes'
    # sources are judged, and only for the ports probed).
    passed = {pr for pr in seen if pr in want}
    leaked = sorted(_name(pr) for pr in passed if not want[pr])
    _expect(not leaked, f"the edge let through: {leaked[:6]}")
    missing = sorted(_name(pr) for pr, should in want.items() if should and pr not in passed)
    _expect(not missing, f"the edge stopped: {missing[:6]}")
    grown = {r: net.edge_dropped(r) - dropped_before[r] for r in roles}
    _expect(all(grown.values()), f"an edge counted no drop: {grown}")

    if "imap" in roles:
        ip_imap, ip_mx1 = "10.77.1.12", "10.77.1.11"
        _expect(_host_can_connect("mx1", ip_imap, 24), "mx1 cannot reach imap LMTP")
        _expect(not _host_can_connect("mx2", ip_imap, 24), "mx2 reaches imap LMTP")
        _expect(_host_can_connect("imap", ip_mx1, 5432), "imap cannot reach mx1 PostgreSQL")
        _expect(_host_can_connect("mx2", ip_mx1, 5432), "mx2 cannot reach mx1 PostgreSQL")
        _expect(_host_can_connect("mx2", ip_mx1, 10025), "mx2 cannot reach mx1's relay port")
        _expect(not _host_can_connect("imap", "10.77.1.13", 5432), "imap reaches mx2 PostgreSQL")
    opened = sum(want.values())
    summary = (
        f"{len(want)} probes (v4+v6, admin and stranger): {opened} open, "
        f"{len(want) - opened} dropped at the edge (tap: {len(passed)} SYNs passed); "
        f"SSH only from admin.sshCidrs"
    )
    if "imap" not in roles:
        return summary + " (one host: no private flows)"
    return summary + "; LMTP mx1->imap only; PG and relay port only from peers"


def _service_state(role: str) -> str:
    """Start times of the host's mail services and a checksum of their config files."""
    cmd = (
        "for u in opensmtpd rspamd redis-server dovecot nginx unbound postgresql@15-main; do "
        "systemctl show -p Id,ActiveEnterTimestamp,MainPID $u 2>/dev/null | tr '\\n' ' '; echo; done; "
        "find /etc/smtpd /etc/smtpd.conf /etc/rspamd/local.d /etc/dovecot /etc/nginx /etc/unbound "
        "/etc/postgresql /etc/mailstack /etc/redis /etc/systemd/system/redis-server.service.d "
        "/var/lib/rspamd/dkim -type f -exec sha256sum {} + 2>/dev/null "
        "| sort; stat -c '%n %a %U %G' /etc/smtpd/pgsql.conf /etc/dovecot/dovecot-sql.conf.ext 2>/dev/null"
    )
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
    """(8) every host reboots, all at once (as after the nightly updates, which share one
    reboot time), and mail flows again."""
    roles = machines_roles()
    old = {role: machines.leader(role) for role in roles}
    for role in roles:
        machines.sh(role, "systemctl reboot")
    for role in roles:
        wait_until(lambda: machines.leader(role) != old[role], 120, f"{role} to restart")
    for role in roles:
        machines.wait_booted(role, 180)
    wait_until(lambda: _port_open(_host_ip("mx1"), 25), 120, "mx1:25 after reboot")
    tok = _token()
    wait_until(lambda: inbound("alice@example.org", tok) or True, 120, "mx1 to accept mail")
    wait_imap("alice@example.org", tok, timeout=120)
    return "all hosts rebooted; inbound delivery and IMAPS work"
