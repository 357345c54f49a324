"""The inside checks of one host: its status program's parameters and output in,
checks out. Standard library only (with decide.py and model.py), because the daily job
runs it on the server itself."""
from __future__ import annotations

from . import decide
from .model import ERROR, OK, Check


def _c(area: str, name: str, verdict: decide.Verdict) -> Check:
    return Check(area, name, *verdict)


def checks(params: dict, data: dict, published_dkim: dict) -> list[Check]:
    """published_dkim: domain -> the p= that DNS serves (or, on the server, the one the
    stack rendered)."""
    role = params["role"]
    out = [Check("services", f"{role} reachable", OK, "the status program runs", "ran")]
    for unit, st in data["units"].items():
        out.append(_c("services", f"{role} {unit.removesuffix('.service')}",
                      decide.service(st["active"], st["restarts"])))
    if params["primary"]:
        out += _replication(params, data)
    if "queue" in data:
        q = data["queue"]
        out.append(_c("queue", role, decide.queue(q.get("count"), q.get("oldest"), q.get("error"))))
    for name, d in data["disk"].items():
        out.append(_c("disk", f"{role} {name} ({d['path']})", decide.disk(d.get("pct"), d.get("error"))))
    if params["backup"]:
        out.append(_c("backup", role, decide.backup(data["backup"], data["now"])))
    out.append(_c("updates", role, decide.updates(data["security_updates"], data["reboot_required"])))
    for key, (target, _port, name) in params["smtp_probes"].items():
        p = data["smtp_probes"][key]
        if key == "outbound":
            out.append(_c("outbound", f"{role} -> {target}:25", decide.outbound(target, p["line"], p["error"])))
        else:
            other, fam = key.split()
            out.append(_c("smtp", f"{role} -> {other}:25 ({fam})", decide.banner(name, p["line"], p["error"])))
    for domain, pub in data["dkim"].items():
        out.append(_c("dkim", f"{domain} key in use ({role})", decide.dkim_key(pub, published_dkim.get(domain))))
    for ip, bl, q in params["dnsbl"]:
        if q in data["dnsbl"]:
            a = data["dnsbl"][q]
            out.append(_c("dnsbl", f"{role} {ip} {bl}", decide.dnsbl(a["answers"], a.get("error"))))
    return out


def unreachable(role: str, error: str) -> list[Check]:
    return [Check("services", f"{role} reachable", ERROR, "the status program runs", error)]


def _replication(params: dict, data: dict) -> list[Check]:
    out = []
    if "replication_error" in data:
        return [Check("replication", f"{r} streaming", ERROR, "streaming", data["replication_error"])
                for r in params["replicas"]]
    by_addr = {r["addr"]: r for r in data["replicas"]}
    for r, rep in params["replicas"].items():
        row = by_addr.get(rep["ip"])
        out.append(_c("replication", f"{r} streaming", decide.replication(
            row and row["state"], int(float(row["lag_bytes"])) if row else None,
            float(row["lag_seconds"] or 0) if row else None)))
        sl = data["slots"].get(rep["slot"])
        out.append(_c("replication", f"slot {rep['slot']}",
                      decide.slot(sl["active"] if sl else None, sl["retained"] if sl else None)))
    return out
