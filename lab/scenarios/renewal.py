"""Certificate renewal without a manual step: certbot's own timer unit renews each host's
certificate from Pebble, the deploy hook (cloud-init/tls/deploy-hook.sh) installs it, and
every TLS port (25 with STARTTLS, 465, 587, 993, 4190 with STARTTLS, 443) serves the new
one, checked from the lab's internet the way a client sees it.

The lab's certificates live 45 days (lab/internet.py PEBBLE_CERT_DAYS) and certbot renews
30 days before expiry, so a renewal would come due after 15 days. Rather than wait, the
scenario widens the lineage's renewal window (certbot's `renew_before_expiry`, what those
days passing would do) and starts certbot.service, the unit certbot.timer starts twice a
day. Nothing else is done by hand: no reload, no copy."""

from __future__ import annotations

import hashlib
import ssl
from concurrent.futures import ThreadPoolExecutor

from mailstack import hosts as H
from mailstack import tls
from mailstack.status import expect, outside, probe

from .. import internet, machines, net
from .. import status as lab_status
from ..util import wait_until
from .clients import _expect, _s, machines_roles

RENEWAL_CONF = f"/etc/letsencrypt/renewal/{tls.CERT_NAME}.conf"
LIVE_CERT = f"/etc/letsencrypt/live/{tls.CERT_NAME}/cert.pem"
# Wider than the certificate's whole life: the renewal is due now.
DUE_NOW = f"renew_before_expiry = {internet.PEBBLE_CERT_DAYS + 1} days"
# What certbot.timer starts; the scenario checks the timer is there to start it.
RENEW = f"""set -euo pipefail
systemctl is-enabled --quiet certbot.timer
systemctl is-active --quiet certbot.timer
conf={RENEWAL_CONF}
trap 'sed -i "/^{DUE_NOW}$/d" "$conf"' EXIT
sed -i '1i {DUE_NOW}' "$conf"
systemctl start certbot.service
"""


def _origin() -> probe.Origin:
    """The status check's outside vantage point on the lab (lab/status.py): the lab's
    internet, trusting Pebble's roots only."""
    return outside.origin(lab_status.environment())


def _served(o: probe.Origin, role: str, port: int, sni: str) -> str:
    """SHA-256 of the certificate the port serves, verified against Pebble's roots."""
    with probe.handshake(o, net.public_v4(role), port, sni, verify=True) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _lineage(role: str) -> str:
    """SHA-256 of the certificate certbot holds for the host now."""
    r = machines.sh(role, f"cat {LIVE_CERT}", timeout=30)
    _expect(r.returncode == 0, f"{role}: no {LIVE_CERT}: {r.stderr.strip()[-200:]}")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(r.stdout)).hexdigest()


def _renew(role: str) -> None:
    r = machines.sh(role, RENEW, timeout=180)
    if r.returncode != 0:
        log = machines.sh(role, "journalctl -u certbot.service -n 20 --no-pager", timeout=30).stdout
        raise AssertionError(f"{role}: renewal failed: {r.stderr.strip()[-300:]}\n{log[-1500:]}")


def s_renewal() -> str:
    """(12.5) certbot's timer unit renews every certificate from Pebble; smtpd, Dovecot and
    nginx serve the new one on every TLS port without a manual step."""
    s = _s()
    hs = H.hosts(s)
    roles = machines_roles()
    targets = [(role, port, sni) for role in roles for port, sni in expect.tls_endpoints(s, hs[role])]
    o = _origin()
    before = {t: _served(o, *t) for t in targets}
    old = {role: _lineage(role) for role in roles}
    for t, fp in before.items():
        _expect(fp == old[t[0]], f"{t[0]}:{t[1]} serves another certificate than certbot's before renewal")
    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        list(pool.map(_renew, roles))
    new = {role: _lineage(role) for role in roles}
    for role in roles:
        _expect(new[role] != old[role], f"{role}: certbot.service did not renew the certificate")
    stale: list[str] = []

    def all_new() -> bool:
        stale[:] = [f"{r}:{p}" for r, p, n in targets if _served(o, r, p, n) != new[r]]
        return not stale

    try:
        wait_until(all_new, 30, "every port to serve the renewed certificate")
    except TimeoutError:
        raise AssertionError(f"still the old certificate on {', '.join(stale)}") from None
    return f"renewed on {', '.join(roles)}; new certificate served on " + ", ".join(f"{r}:{p}" for r, p, _ in targets)
