"""`python -m lab status`: mailstack.status's checks, unchanged, against the running lab.

Only the Environment differs from the real stack's: settings, addresses and DKIM keys
are the lab's, the inside channel is nsenter with deploy.RUN_PROGRAM (as lab/steps.py),
and the outside vantage point is the lab's internet (the outside MTA's addresses, the
lab DNS, Pebble's roots as the trusted CAs)."""

from __future__ import annotations

from mailstack import dns
from mailstack.deploy import RUN_PROGRAM
from mailstack.status.expect import Environment

from . import config, internet, machines, net
from .netns import inside
from .util import STATE

INSIDE_TIMEOUT = 240
TRUST = STATE / "tls" / "status-trust.pem"


def environment(extra_ca: str = "") -> Environment:
    """extra_ca: one more CA to trust (the status scenario's short-lived certificate)."""
    s = config.running_settings()
    data = config.load_or_make_secrets(s)
    TRUST.write_text((STATE / "tls" / "pebble-roots.pem").read_text() + extra_ca)

    def run_on(role: str, program: str) -> str:
        r = machines.exec_in(role, ["bash", "-c", RUN_PROGRAM], input=program, timeout=INSIDE_TIMEOUT)
        if r.returncode != 0:
            raise RuntimeError(f"{role}: status program exit {r.returncode}: {r.stderr.strip()[-200:]}")
        return r.stdout

    return Environment(
        settings=s,
        addresses=config.addresses(s),
        dkim_public=config.dkim_public(s, data),
        dkim_published=config.dkim_published(s, data),
        nameservers={z: [internet.NS_NAME] for z in dns.zones(s)},
        run_on=run_on,
        resolver=net.INTERNET_V4,
        cafile=str(TRUST),
        helo=internet.OUTSIDE_MX,
        vantage=inside,
        source_v4=net.OUTSIDE_V4,
        source_v6=net.OUTSIDE_V6,
    )
