"""The status program that runs on a server (Debian's python3, standard library only):
reads its parameters, looks around read-only, prints one JSON object. `inside.program`
sends it over the deploy-step channel with PARAMS prepended; the daily job on the server
runs it with the path of its parameter file. Nothing secret leaves the host: of the DKIM
key only the public half is reported."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor

if "PARAMS" not in globals():
    with open(sys.argv[1]) as _f:
        PARAMS = _f.read()

if "PROBE" in globals():  # sent inline by inside.program
    probe = types.ModuleType("mailstack_status_probe")
    sys.modules[probe.__name__] = probe  # dataclasses look their module up
    exec(compile(PROBE, "probe.py", "exec"), probe.__dict__)  # noqa: F821 (prepended by inside.program)
else:  # the daily job: installed next to this file
    import probe

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
    return [line.split("|") for line in o.splitlines() if line]


out["units"] = {}
for u in P["units"]:
    rc, o, e = run(["systemctl", "show", "-p", "ActiveState,NRestarts", u])
    kv = dict(line.split("=", 1) for line in o.splitlines() if "=" in line)
    out["units"][u] = {"active": kv.get("ActiveState"), "restarts": int(kv.get("NRestarts") or 0)}

if P["primary"]:
    try:
        out["replicas"] = [
            dict(zip(("addr", "state", "lag_bytes", "lag_seconds"), r))
            for r in psql(
                "select coalesce(host(client_addr),''), state, "
                "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint, "
                "coalesce(extract(epoch from replay_lag), 0) from pg_stat_replication"
            )
        ]
        out["slots"] = {
            r[0]: {"active": r[1] == "t", "retained": int(float(r[2] or 0))}
            for r in psql(
                "select slot_name, active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
                "from pg_replication_slots"
            )
        }
    except RuntimeError as e:
        out["replication_error"] = str(e)

if P["queue"]:
    rc, o, e = run(["smtpctl", "show", "queue"])
    if rc != 0:
        out["queue"] = {"error": e or f"smtpctl exit {rc}"}
    else:
        ctimes = []
        for entry in o.splitlines():
            f = entry.split("|")
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
    out["backup"] = {"last_run": {"result": "failed", "error": f"status file unreadable: {e}"}}

rc, o, e = run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "dist-upgrade"], timeout=120)
out["security_updates"] = (
    sum(1 for line in o.splitlines() if line.startswith("Inst ") and "-security" in line) if rc == 0 else None
)
out["reboot_required"] = os.path.exists(P["reboot_file"])

out["dkim"] = {}
for domain, path in P["dkim"].items():
    rc, o, e = run(["sh", "-c", 'openssl pkey -in "$1" -pubout -outform DER | base64 -w0', "sh", path])
    out["dkim"][domain] = o.strip() if rc == 0 and o.strip() else None

out["dnsbl"] = {}
for _ip, _bl, q in P["dnsbl"]:
    try:
        out["dnsbl"][q] = {"answers": sorted({a[4][0] for a in socket.getaddrinfo(q, None, socket.AF_INET)})}
    except socket.gaierror as err:
        if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            out["dnsbl"][q] = {"answers": []}
        else:
            out["dnsbl"][q] = {"answers": None, "error": str(err)}


def greet(host, port):
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.settimeout(10)
            return s.makefile("rb").readline().decode(errors="replace").strip(), None
    except OSError as e:
        return None, str(e)


out["smtp_probes"] = {}
for key, (host, port, _name) in P["smtp_probes"].items():
    line, err = greet(host, port)
    out["smtp_probes"][key] = {"line": line, "error": err}


def look_at(peer, fam, pool):
    """The outside view of one peer on one address family, from this host's own public
    address of that family: open ports, each TLS endpoint's certificate, the SMTP
    sessions (relay probe on 25) and the SMTPS greeting."""
    pp = P["peers"]
    o = probe.Origin(helo=pp["helo"], source_v4=pp["source"]["v4"], source_v6=pp["source"]["v6"])
    ip = pp["hosts"][peer]["ip"][fam]
    res = {"open": sorted(probe.open_ports(o, ip, pp["scan"], pool)), "tls": {}, "smtp": {}}
    for port, sni in pp["hosts"][peer]["tls"]:
        res["tls"][str(port)] = dataclasses.asdict(probe.certificate(o, ip, port, sni))
        if port in (25, 587):
            r = probe.smtp(o, ip, port, sni, pp["relay_probe"] if port == 25 else None)
            res["smtp"][str(port)] = dataclasses.asdict(r)
        elif port == 465:
            line, err = probe.smtps_banner(o, ip, port, sni)
            res["smtp"][str(port)] = {"banner": line, "error": err}
    return res


out["peers"] = {}
if P.get("peers"):
    with ThreadPoolExecutor(max_workers=probe.SCAN_WORKERS) as scan_pool, ThreadPoolExecutor(max_workers=8) as pool:
        jobs = {
            (peer, fam): pool.submit(look_at, peer, fam, scan_pool)
            for peer in P["peers"]["hosts"]
            for fam in ("v4", "v6")
        }
        for (peer, fam), f in jobs.items():
            out["peers"].setdefault(peer, {})[fam] = f.result()
print(json.dumps(out))
