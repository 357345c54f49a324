"""Hardening seen on the running hosts (docs/hardening.md): unattended upgrades cover the
origins the hosts install from, and every TLS listener offers Mozilla's intermediate
profile to a scanner on the lab's internet."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from mailstack import hosts as H
from mailstack import updates

from .. import machines, net
from ..tls_scan import problems
from ..util import NETNS, ROOT
from .clients import _expect, _s, machines_roles


def s_updates() -> str:
    """(11.4) `unattended-upgrade --dry-run` on every host lists security and backports."""
    want = [
        f"origin={o},codename={c},label={lab}".replace("${distro_codename}", "bookworm")
        for o, c, lab in updates.ORIGINS
    ]
    found = {}
    for role in machines_roles():
        r = machines.sh(role, "unattended-upgrade --dry-run --debug 2>&1", timeout=300)
        _expect(r.returncode == 0, f"{role}: unattended-upgrade --dry-run failed: {r.stdout[-500:]}")
        m = re.search(r"^Allowed origins are: (.*)$", r.stdout, re.M)
        _expect(m is not None, f"{role}: no 'Allowed origins' line in: {r.stdout[-500:]}")
        origins = [o.strip() for o in m.group(1).split(", ")]
        _expect(origins == want, f"{role}: allowed origins {origins}, expected {want}")
        conf = machines.sh(
            role,
            "apt-config dump Unattended-Upgrade::Automatic-Reboot-Time; dpkg-query -W -f '${Status}' needrestart",
            timeout=60,
        ).stdout
        _expect(f'"{_s().updates.reboot_time}"' in conf, f"{role}: reboot time not configured: {conf}")
        _expect("ok installed" in conf, f"{role}: needrestart missing")
        found[role] = len(origins)
    return f"allowed origins on {', '.join(found)}: {'; '.join(want)}"


def _scan(ip: str, port: int, starttls: str | None, name: str) -> dict:
    """sslyze from the lab's internet (its own process inside the lab namespace)."""
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            NETNS,
            sys.executable,
            "-m",
            "lab.tls_scan",
            ip,
            str(port),
            "--name",
            name,
            *(["--starttls", starttls] if starttls else []),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _expect(r.returncode == 0, f"{ip}:{port}: scan failed: {r.stderr[-500:]}")
    return json.loads(r.stdout)


def s_tls_profile() -> str:
    """(11.5) sslyze: every TLS listener of submission, IMAP, ManageSieve and HTTPS offers
    only TLS 1.2/1.3 with Mozilla's intermediate suites."""
    s = _s()
    hs = H.hosts(s)
    targets = []  # (role, port, starttls, name)
    for role in machines_roles():
        h = hs[role]
        if h.runs(H.SUBMISSION):
            targets += [(role, 465, None, s.fqdn("smtp")), (role, 587, "smtp", s.fqdn("smtp"))]
        if h.runs(H.IMAP):
            targets += [(role, 993, None, s.fqdn("imap")), (role, 4190, "sieve", s.fqdn("imap"))]
        if h.runs(H.WEB):
            targets.append((role, 443, None, f"mta-sts.{s.primary_domain}"))
    done = []
    for role, port, starttls, name in targets:
        accepted = _scan(net.public_v4(role), port, starttls, name)
        bad = problems(accepted)
        _expect(not bad, f"{role}:{port}: {bad}")
        done.append(f"{role}:{port}")
    return "intermediate only: " + ", ".join(done)
