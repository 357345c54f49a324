"""The inside view: one read-only program per host, run as root over the same channel as
the deploy steps (`deploy.RUN_PROGRAM`: SSH for the real stack, nsenter in the lab). It
prints one JSON object; nothing secret leaves the host (DKIM: only the public half)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import backup
from .. import hosts as H
from . import expect

COLLECT = Path(__file__).with_name("collect.py")
# Shipped with collect.py: the socket-level probes, the same code as the operator's.
PROBE = Path(__file__).with_name("probe.py")


def params(env: expect.Environment, role: str) -> dict:
    """What the program on `role` looks at, and what hostchecks needs to judge it:
    plain JSON, derived from the rendering, no secret."""
    host = env.hosts[role]
    probes: dict[str, list] = {}
    if host.runs(H.SUBMISSION):
        probes["outbound"] = [env.outbound_target, 25, None]
    sends = host.runs(H.MX) or host.runs(H.BACKUP_MX)
    return {
        "role": role,
        "units": expect.units(host),
        "primary": host.runs(H.DB_PRIMARY),
        "replicas": {
            r: {"ip": env.hosts[r].private_ip, "slot": slot} for r, slot in expect.replica_slots(env.settings).items()
        }
        if host.runs(H.DB_PRIMARY)
        else {},
        "queue": sends,
        "disks": expect.disk_paths(host),
        "backup": role in backup.hosts(env.settings),
        "backup_file": backup.STATUS_FILE,
        "reboot_file": expect.REBOOT_REQUIRED_FILE,
        "dkim": expect.dkim_keys(env.settings) if host.runs(H.SUBMISSION) else {},
        "dnsbl": [list(q) for q in expect.dnsbl_queries(env, role)] if sends else [],
        "smtp_probes": probes,
        "peers": peer_params(env, role),
    }


def peer_params(env: expect.Environment, role: str) -> dict:
    """The outside view from `role` of each peer (expect.peers), on both address
    families, from this host's own public addresses: what the peer's firewall should
    let through from here, its TLS endpoints and the names its certificate must carry.
    Trust: the host's system store (where Debian, and in the lab Pebble's roots, are)."""
    if not expect.peers(env, role):
        return {}
    s = env.settings
    out: dict = {
        "helo": env.hosts[role].fqdn,
        "source": {"v4": env.v4(role), "v6": env.v6(role)},
        "scan": expect.scan_ports(),
        "relay_probe": expect.RELAY_PROBE_RCPT,
        "hosts": {},
    }
    for other in expect.peers(env, role):
        out["hosts"][other.role] = {
            "fqdn": other.fqdn,
            "ip": {"v4": env.v4(other.role), "v6": env.v6(other.role)},
            "open": {f"v{f}": sorted(expect.peer_open_ports(env, other, role, f)) for f in (4, 6)},
            "tls": [list(e) for e in expect.tls_endpoints(s, other)],
            "cert_names": expect.cert_names(s, other),
        }
    return out


def program(env: expect.Environment, role: str) -> str:
    """The bash program for `role` (run by deploy.RUN_PROGRAM)."""
    py = (
        f"PARAMS = {json.dumps(json.dumps(params(env, role)))}\n"
        f"PROBE = {json.dumps(PROBE.read_text())}\n" + COLLECT.read_text()
    )
    return "set -eu\nexec python3 - <<'MAILSTACK_STATUS_EOF'\n" + py + "\nMAILSTACK_STATUS_EOF\n"


def collect(env: expect.Environment, role: str) -> dict:
    assert env.run_on is not None, "inside checks need a way to run a program on the host"
    raw = env.run_on(role, program(env, role))
    return json.loads(raw.strip().splitlines()[-1])
