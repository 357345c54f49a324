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



def params(env: expect.Environment, role: str) -> dict:
    """What the program on `role` looks at, and what hostchecks needs to judge it:
    plain JSON, derived from the rendering, no secret."""
    host = env.hosts[role]
    probes: dict[str, list] = {}
    if host.runs(H.SUBMISSION):
        probes["outbound"] = [env.outbound_target, 25, None]
    # The MX hosts watch each other: mx1 looking at mx2 and mx2 at mx1, over the public
    # addresses, as another mail server would.
    mxes = [h for h in env.hosts.values() if h.runs(H.MX) or h.runs(H.BACKUP_MX)]
    if host in mxes:
        for other in mxes:
            if other.role != role:
                probes[f"{other.role} v4"] = [env.v4(other.role), 25, other.fqdn]
                probes[f"{other.role} v6"] = [env.v6(other.role), 25, other.fqdn]
    sends = host.runs(H.MX) or host.runs(H.BACKUP_MX)
    return {
        "role": role,
        "units": expect.units(host),
        "primary": host.runs(H.DB_PRIMARY),
        "replicas": {r: {"ip": env.hosts[r].private_ip, "slot": slot}
                     for r, slot in expect.replica_slots(env.settings).items()} if host.runs(H.DB_PRIMARY) else {},
        "queue": sends,
        "disks": expect.disk_paths(host),
        "backup": role in backup.hosts(env.settings),
        "backup_file": backup.STATUS_FILE,
        "reboot_file": expect.REBOOT_REQUIRED_FILE,
        "dkim": expect.dkim_keys(env.settings) if host.runs(H.SUBMISSION) else {},
        "dnsbl": [list(q) for q in expect.dnsbl_queries(env, role)] if sends else [],
        "smtp_probes": probes,
    }


def program(env: expect.Environment, role: str) -> str:
    """The bash program for `role` (run by deploy.RUN_PROGRAM)."""
    py = f"PARAMS = {json.dumps(json.dumps(params(env, role)))}\n" + COLLECT.read_text()
    return "set -eu\nexec python3 - <<'MAILSTACK_STATUS_EOF'\n" + py + "\nMAILSTACK_STATUS_EOF\n"


def collect(env: expect.Environment, role: str) -> dict:
    raw = env.run_on(role, program(env, role))
    return json.loads(raw.strip().splitlines()[-1])
