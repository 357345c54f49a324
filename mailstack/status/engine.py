"""Run every check for an Environment: outside probes and the inside program on each
host, in parallel, then the decisions of decide.py. Same code for the stack and the lab."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from .. import dkim
from .. import dns as D
from .. import hosts as H
from . import decide, expect, hostchecks, inside, outside, probe
from .model import ERROR, Check

WORKERS = 24
SCAN_WORKERS = 192


def _check(area: str, name: str, verdict: decide.Verdict) -> Check:
    return Check(area, name, *verdict)


def run(env: expect.Environment) -> list[Check]:
    hosts = env.hosts
    with ThreadPoolExecutor(max_workers=WORKERS) as pool, ThreadPoolExecutor(max_workers=SCAN_WORKERS) as scan_pool:
        inside_f = {r: pool.submit(_inside, env, r) for r in hosts}
        jobs: list = []
        jobs += [pool.submit(f) for f in _dns_jobs(env)]
        jobs += [pool.submit(f) for f in _port_jobs(env, scan_pool)]
        jobs += [pool.submit(f) for f in _tls_smtp_jobs(env)]
        checks = [c for j in jobs for c in j.result()]
        insides = {r: f.result() for r, f in inside_f.items()}
    checks += _inside_checks(env, insides, checks)
    return checks


def _inside(env: expect.Environment, role: str) -> tuple[dict | None, str | None]:
    try:
        return inside.collect(env, role), None
    except Exception as exc:  # the host is unreachable: every inside check says so
        return None, f"{type(exc).__name__}: {exc}"[:200]


# ------------------------------------------------------------------ outside

Job = Callable[[], list[Check]]


def _dns_jobs(env: expect.Environment) -> list[Job]:
    jobs: list[Job] = []
    for rec in env.records():

        def j(rec=rec):
            found, err = outside.lookup(env, rec.fqdn, rec.type)
            return [
                _check(
                    "dns",
                    f"{rec.fqdn.rstrip('.')} {rec.type}",
                    decide.rrset(outside.parse_values(rec.type, rec.values), found, err),
                )
            ]

        jobs.append(j)
    for p in env.ptrs():

        def j(p=p):
            names, err = outside.lookup(env, outside.reverse(p.ip), "PTR")
            fwd: set[str] = set()
            if names:
                for n in names:
                    got, _ = outside.lookup(env, n, "A" if p.family == 4 else "AAAA")
                    fwd |= got or set()
            if err:
                v = (ERROR, f"PTR {p.name}", err)
            else:
                v = decide.ptr(p.ip, p.name, names or (), fwd)
            return [_check("rdns", f"{p.role} v{p.family} {p.ip}", v)]

        jobs.append(j)
    for zone in D.zones(env.settings):

        def j(zone=zone):
            found, err = outside.lookup(env, zone, "NS")
            return [_check("delegation", zone, decide.delegation(env.nameservers.get(zone, []), found, err))]

        jobs.append(j)
    web = H.find(env.hosts, H.WEB)
    policy = D.mta_sts_policy(env.settings)
    for d in env.settings.domains:

        def j(d=d):
            st, body, err = outside.https_get(env, env.v4(web.role), f"mta-sts.{d}", "/.well-known/mta-sts.txt")
            return [
                _check("mta-sts", f"https://mta-sts.{d}/.well-known/mta-sts.txt", decide.mta_sts(policy, st, body, err))
            ]

        jobs.append(j)
    return jobs


def _port_jobs(env: expect.Environment, scan_pool: ThreadPoolExecutor) -> list[Job]:
    """One matrix per host and address family; its probes run in `scan_pool` (a pool of
    its own, so the outer jobs waiting for them can't starve it), all in parallel since
    a dropped port waits out its timeout."""
    jobs: list[Job] = []
    scan = expect.scan_ports()
    for role, host in env.hosts.items():
        for fam, ip in ((4, env.v4(role)), (6, env.v6(role))):

            def j(role=role, host=host, fam=fam, ip=ip):
                found = probe.open_ports(outside.origin(env), ip, scan, scan_pool)
                return [_check("ports", f"{role} v{fam} {ip}", decide.ports(expect.open_ports(host), found))]

            jobs.append(j)
    return jobs


def _tls_smtp_jobs(env: expect.Environment) -> list[Job]:
    """Certificates on every TLS endpoint, SMTP sessions on 25, 587 and 465: probed from
    the operator's side, judged by the same hostchecks functions as the peers' view."""
    s = env.settings
    jobs: list[Job] = []
    for role, host in env.hosts.items():
        ip = env.v4(role)
        names = expect.cert_names(s, host)
        for port, sni in expect.tls_endpoints(s, host):

            def tls(role=role, ip=ip, port=port, sni=sni, names=names):
                r = outside.certificate(env, ip, port, sni)
                return [hostchecks.tls_check("tls", f"{role}:{port} ({sni})", names, asdict(r))]

            jobs.append(tls)
            if port == 25:

                def smtp25(role=role, ip=ip, host=host, sni=sni):
                    r = outside.smtp(env, ip, 25, sni, expect.RELAY_PROBE_RCPT)
                    if decide.vantage_refused(r.banner):
                        return [
                            _check("smtp", f"{role}:25 {w}", decide.not_judged(w, r.banner))
                            for w in ("banner", "STARTTLS", "no open relay")
                        ]
                    return hostchecks.smtp_checks("smtp", f"{role}:25", 25, host.fqdn, asdict(r))

                jobs.append(smtp25)
            elif port == 587:

                def smtp587(role=role, ip=ip, sni=sni):
                    r = outside.smtp(env, ip, 587, sni)
                    return hostchecks.smtp_checks("smtp", f"{role}:587", 587, sni, asdict(r))

                jobs.append(smtp587)
            elif port == 465:

                def smtps465(role=role, ip=ip, sni=sni):
                    line, err = outside.smtps_banner(env, ip, 465, sni)
                    return hostchecks.smtp_checks("smtp", f"{role}:465", 465, sni, {"banner": line, "error": err})

                jobs.append(smtps465)
    return jobs


# ------------------------------------------------------------------ inside


def _inside_checks(env: expect.Environment, insides: dict, outside_checks: list[Check]) -> list[Check]:
    out: list[Check] = []
    served_dkim = _served_dkim(env)
    for role in env.hosts:
        data, err = insides[role]
        if data is None:
            out += hostchecks.unreachable(role, err or "?")
        else:
            out += hostchecks.checks(inside.params(env, role), data, served_dkim)
    return out


def _served_dkim(env: expect.Environment) -> dict[str, str | None]:
    out = {}
    for d in env.settings.domains:
        sel = dkim.plan(env.settings).signing.selector
        found, _ = outside.lookup(env, f"{sel}._domainkey.{d}", "TXT")
        vals = [decide.dkim_p(t) for t in found or ()]
        out[d] = next((v for v in vals if v), None)
    return out


def timed_run(env: expect.Environment) -> tuple[list[Check], float]:
    t = time.monotonic()
    return run(env), time.monotonic() - t
