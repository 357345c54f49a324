"""The inside view: one read-only program per host, run as root over the same channel as
the deploy steps (`deploy.RUN_PROGRAM`: SSH for the real stack, nsenter in the lab). It
prints one JSON object; nothing secret leaves the host (DKIM: only the public half)."""
from __future__ import annotations

import json

from .. import hosts as H
from . import expect

# Runs on the server under Debian's python3 (cloud-init needs it, so it is always there).
_PROGRAM = r'''
import base64, json, os, socket, subprocess, time
P = json.loads(PARAMS)
out = {"now": time.time()}

def run(cmd, timeout=30):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout, r.stderr.strip()[-200:]
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, "", str(e)

def psql(sql):
    rc, o, e = run(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-F", "|", "-d", "postgres", "-c", sql])
    if rc != 0:
        raise RuntimeError(e or f"psql exit {rc}")
    return [l.split("|") for l in o.splitlines() if l]

out["units"] = {}
for u in P["units"]:
    rc, o, e = run(["systemctl", "show", "-p", "ActiveState,NRestarts", u])
    kv = dict(l.split("=", 1) for l in o.splitlines() if "=" in l)
    out["units"][u] = {"active": kv.get("ActiveState"), "restarts": int(kv.get("NRestarts") or 0)}

if P["primary"]:
    try:
        out["replicas"] = [dict(zip(("addr", "state", "lag_bytes", "lag_seconds"), r)) for r in psql(
            "select coalesce(host(client_addr),''), state, "
            "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint, "
            "coalesce(extract(epoch from replay_lag), 0) from pg_stat_replication")]
        out["slots"] = {r[0]: {"active": r[1] == "t", "retained": int(float(r[2] or 0))} for r in psql(
            "select slot_name, active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
            "from pg_replication_slots")}
    except RuntimeError as e:
        out["replication_error"] = str(e)

if P["queue"]:
    rc, o, e = run(["smtpctl", "show", "queue"])
    if rc != 0:
        out["queue"] = {"error": e or f"smtpctl exit {rc}"}
    else:
        ctimes = []
        for l in o.splitlines():
            f = l.split("|")
            if len(f) > 7 and f[7].isdigit():
                ctimes.append(int(f[7]))
        out["queue"] = {"count": len(ctimes), "oldest": (time.time() - min(ctimes)) if ctimes else 0}

out["disk"] = {}
for name, path in P["disks"].items():
    try:
        st = os.statvfs(path)
        used = st.f_blocks - st.f_bfree
        total = used + st.f_bavail
        out["disk"][name] = {"path": path, "pct": 100.0 * used / total if total else 0.0}
    except OSError as e:
        out["disk"][name] = {"path": path, "error": str(e)}

try:
    with open(P["backup_file"]) as f:
        out["backup"] = json.load(f)
except FileNotFoundError:
    out["backup"] = None
except (OSError, ValueError) as e:
    out["backup"] = {"result": f"status file unreadable: {e}", "finished": 0}

rc, o, e = run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "dist-upgrade"], timeout=120)
out["security_updates"] = sum(1 for l in o.splitlines() if l.startswith("Inst ") and "-security" in l) if rc == 0 else None
out["reboot_required"] = os.path.exists(P["reboot_file"])

out["dkim"] = {}
for domain, path in P["dkim"].items():
    rc, o, e = run(["sh", "-c", 'openssl pkey -in "$1" -pubout -outform DER | base64 -w0', "sh", path])
    out["dkim"][domain] = o.strip() if rc == 0 and o.strip() else None

out["dnsbl"] = {}
for q in P["dnsbl"]:
    try:
        out["dnsbl"][q] = {"answers": sorted({a[4][0] for a in socket.getaddrinfo(q, None, socket.AF_INET)})}
    except socket.gaierror as e:
        if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            out["dnsbl"][q] = {"answers": []}
        else:
            out["dnsbl"][q] = {"answers": None, "error": str(e)}

def greet(host, port):
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.settimeout(10)
            return s.makefile("rb").readline().decode(errors="replace").strip(), None
    except OSError as e:
        return None, str(e)

out["smtp_probes"] = {}
for key, (host, port) in P["smtp_probes"].items():
    line, err = greet(host, port)
    out["smtp_probes"][key] = {"line": line, "error": err}
print(json.dumps(out))
'''


def program(env: expect.Environment, role: str) -> str:
    """The bash program for `role` (run by deploy.RUN_PROGRAM)."""
    s = env.settings
    host = env.hosts[role]
    probes: dict[str, tuple[str, int]] = {}
    if host.runs(H.SUBMISSION):
        probes["outbound"] = (env.outbound_target, 25)
    # The MX hosts watch each other: mx1 looking at mx2 and mx2 at mx1, over the public
    # addresses, as another mail server would.
    mxes = [h for h in env.hosts.values() if h.runs(H.MX) or h.runs(H.BACKUP_MX)]
    if host in mxes:
        for other in mxes:
            if other.role != role:
                probes[f"{other.role} v4"] = (env.v4(other.role), 25)
                probes[f"{other.role} v6"] = (env.v6(other.role), 25)
    params = {
        "units": expect.units(host),
        "primary": host.runs(H.DB_PRIMARY),
        "queue": host.runs(H.MX) or host.runs(H.BACKUP_MX),
        "disks": expect.disk_paths(host),
        "backup_file": expect.BACKUP_STATUS_FILE,
        "reboot_file": expect.REBOOT_REQUIRED_FILE,
        "dkim": expect.dkim_keys(s) if host.runs(H.SUBMISSION) else {},
        "dnsbl": [q for _, _, q in expect.dnsbl_queries(env, role)] if host.runs(H.MX) or host.runs(H.BACKUP_MX) else [],
        "smtp_probes": probes,
    }
    py = f"PARAMS = {json.dumps(json.dumps(params))}\n" + _PROGRAM
    return "set -eu\nexec python3 - <<'MAILSTACK_STATUS_EOF'\n" + py + "\nMAILSTACK_STATUS_EOF\n"


def collect(env: expect.Environment, role: str) -> dict:
    raw = env.run_on(role, program(env, role))
    return json.loads(raw.strip().splitlines()[-1])
