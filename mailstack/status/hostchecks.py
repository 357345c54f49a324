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
        out.append(
            _c("services", f"{role} {unit.removesuffix('.service')}", decide.service(st["active"], st["restarts"]))
        )
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
    out += peer_checks(params, data)
    for domain, pub in data["dkim"].items():
        out.append(_c("dkim", f"{domain} key in use ({role})", decide.dkim_key(pub, published_dkim.get(domain))))
    for ip, bl, q in params["dnsbl"]:
        if q in data["dnsbl"]:
            a = data["dnsbl"][q]
            out.append(_c("dnsbl", f"{role} {ip} {bl}", decide.dnsbl(a["answers"], a.get("error"))))
    return out


PEER = "peer"


def peer_checks(params: dict, data: dict) -> list[Check]:
    """The outside view of each peer from this host (inside.peer_params, collect.look_at),
    judged like the operator's: area "peer", named `<from>→<to> v4|v6 ...`."""
    pp = params.get("peers") or {}
    out: list[Check] = []
    for other, exp in pp.get("hosts", {}).items():
        for fam in ("v4", "v6"):
            got = data.get("peers", {}).get(other, {}).get(fam)
            label = f"{params['role']}→{other} {fam}"
            if got is None:
                out.append(Check(PEER, f"{label} ports", ERROR, "probed", "no result from the host"))
                continue
            out.append(_c(PEER, f"{label} ports", decide.ports(exp["open"][fam], got["open"])))
            for port, sni in exp["tls"]:
                r = got["tls"].get(str(port)) or {}
                out.append(tls_check(PEER, f"{label} :{port} certificate ({sni})", exp["cert_names"], r))
                s = got["smtp"].get(str(port))
                if s is not None:
                    out += smtp_checks(PEER, f"{label} :{port}", port, exp["fqdn"] if port == 25 else sni, s)
    return out


def tls_check(area: str, name: str, cert_names: list[str], r: dict) -> Check:
    """probe.TlsResult as a dict."""
    return _c(
        area, name, decide.certificate(cert_names, r.get("days_left"), r.get("names") or (), r.get("verify_error"))
    )


def smtp_checks(area: str, at: str, port: int, name: str, r: dict) -> list[Check]:
    """The SMTP session checks of one endpoint (probe.SmtpResult as a dict; on 465 only
    banner and error): the banner names `name`; on 25 STARTTLS offered, AUTH hidden
    and no open relay; on 587 STARTTLS, no AUTH before TLS and AUTH after it."""
    out = [_c(area, f"{at} banner", decide.banner(name, r.get("banner"), r.get("error")))]
    if port == 25:
        out.append(
            _c(area, f"{at} STARTTLS", decide.starttls(r.get("features"), r.get("tls_ok", False), None, r.get("error")))
        )
        out.append(_c(area, f"{at} no open relay", decide.relay(r.get("relay_reply"), r.get("error"))))
    elif port == 587:
        auth = r.get("auth_after_tls") if r.get("tls_ok") else None
        out.append(
            _c(
                area,
                f"{at} STARTTLS",
                decide.starttls(r.get("features"), r.get("tls_ok", False), bool(auth), r.get("error")),
            )
        )
    return out


def unreachable(role: str, error: str) -> list[Check]:
    return [Check("services", f"{role} reachable", ERROR, "the status program runs", error)]


def _replication(params: dict, data: dict) -> list[Check]:
    out = []
    if "replication_error" in data:
        return [
            Check("replication", f"{r} streaming", ERROR, "streaming", data["replication_error"])
            for r in params["replicas"]
        ]
    by_addr = {r["addr"]: r for r in data["replicas"]}
    for r, rep in params["replicas"].items():
        row = by_addr.get(rep["ip"])
        out.append(
            _c(
                "replication",
                f"{r} streaming",
                decide.replication(
                    row and row["state"],
                    int(float(row["lag_bytes"])) if row else None,
                    float(row["lag_seconds"] or 0) if row else None,
                ),
            )
        )
        sl = data["slots"].get(rep["slot"])
        out.append(
            _c(
                "replication",
                f"slot {rep['slot']}",
                decide.slot(sl["active"] if sl else None, sl["retained"] if sl else None),
            )
        )
    return out
