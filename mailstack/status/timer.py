"""The daily status job, on one host: the database primary (mx1), which sees every
replica's replication, sends mail, holds the DKIM keys and looks at mx2 from outside
(ports, TLS, SMTP: the peer checks). It runs the host's own inside checks (hostchecks)
and mails the postmaster what changed.

It cannot see the other hosts' inside view or probe from outside: that is `make status`
on the operator's machine. The host's files are this package's standard-library modules,
installed unchanged, plus the parameters rendered here."""

from __future__ import annotations

import json
from pathlib import Path

from .. import dkim, dns
from .. import hosts as H
from ..bundle import Bundle, File
from ..context import Context
from ..templates import read, render
from . import expect, inside

LIB = "/usr/local/lib/mailstack-status"
CONF_DIR = "/etc/mailstack/status"
STATE_FILE = "/var/lib/mailstack/status-last.json"
UNITS = ("mailstack-status.service", expect.DAILY_TIMER)
# The modules the job needs: standard library only (tests/test_status.py checks it).
MODULES = ("__init__.py", "model.py", "decide.py", "hostchecks.py", "collect.py", "probe.py", "daily.py")


def bundle(ctx: Context, host: H.Host) -> Bundle:
    if not expect.runs_daily_job(host):
        return Bundle()
    s = ctx.settings
    pubs = {d: dns.dkim_public_from_private(ctx.secrets.dkim_keys[d]) for d in s.domains}
    signing = dkim.plan(s).signing.selector
    others = {
        sel: {d: dns.dkim_public_from_private(pem) for d, pem in keys.items()}
        for sel, keys in ctx.secrets.dkim_keyring.items()
        if sel != signing
    }
    env = expect.Environment(s, ctx.addresses, pubs, {}, None, dkim_published=others)
    here = Path(__file__).parent
    files = [File(f"{LIB}/mailstack/__init__.py", "")]
    files += [File(f"{LIB}/mailstack/status/{m}", (here / m).read_text()) for m in MODULES]
    conf = {
        "role": host.role,
        "host": host.fqdn,
        "mail_from": f"mailstack-status@{host.fqdn}",
        "mail_to": f"postmaster@{s.primary_domain}",
        "params_file": f"{CONF_DIR}/params.json",
        "state_file": STATE_FILE,
        "published_dkim": pubs,
    }
    files += [
        File(f"{CONF_DIR}/params.json", json.dumps(inside.params(env, host.role), indent=1, sort_keys=True) + "\n"),
        File(f"{CONF_DIR}/daily.json", json.dumps(conf, indent=1, sort_keys=True) + "\n"),
    ]
    files += [File(f"/etc/systemd/system/{u}", read(f"status/{u}")) for u in UNITS]
    return Bundle(tuple(files), render("status/deploy.sh.j2", lib=LIB, conf_dir=CONF_DIR, timer=expect.DAILY_TIMER))
