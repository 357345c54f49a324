"""DKIM key rotation (docs/dkim.md): the schedule's clock is stepped through its phases;
at each step the lab does what `pulumi up` does (the records into knot, mx1's
`services-mx1` step), then alice submits mail that the outside MTA receives and dkimpy
verifies against the lab DNS. Mail signed before the switch keeps verifying through the
grace period; the old selector, and its key file on mx1, go only after it."""

from __future__ import annotations

import re
import time

from mailstack import deploy, dkim

from .. import config, internet, machines, net, stand, steps
from ..netns import inside
from ..util import wait_until
from .clients import (
    LabSMTP,
    _expect,
    _host_ip,
    _token,
    message,
    outside_messages,
    tls_context,
)


def lab_dns_txt(name: bytes | str, timeout: int = 5) -> bytes | None:
    """dkimpy's DNS look-up, asked of the lab's knot directly (no cache between the
    phases): the TXT strings joined, None if there is no record."""
    import dns.resolver

    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [net.INTERNET_V4]
    n = name.decode() if isinstance(name, bytes) else name
    with inside():
        try:
            ans = r.resolve(n.rstrip("."), "TXT", lifetime=timeout)
        except dns.resolver.NXDOMAIN:
            return None
    return b"".join(b"".join(rd.strings) for rd in ans)


# A 30-day period from an arbitrary start; the clock is set, so nothing waits for days.
ROTATION = {"selector": "mail", "rotationDays": 30, "publishDays": 3, "graceDays": 3, "start": "2030-01-01"}
CLOCKS = [  # (label, clock, phase, signing, published)
    ("before", "2029-12-20T00:00:00Z", dkim.STEADY, "mail", ("mail",)),
    ("publish", "2029-12-30T00:00:00Z", dkim.PUBLISH, "mail", ("mail", "mail-g1")),
    ("switch", "2030-01-02T00:00:00Z", dkim.GRACE, "mail-g1", ("mail", "mail-g1")),
    ("grace end", "2030-01-04T00:00:00Z", dkim.STEADY, "mail-g1", ("mail-g1",)),
]
SENDER = "alice@example.org"
# The shortest TTL the settings allow: mx1's step refuses to switch signing to a key
# published less than a TTL ago, so the scenario really waits it out once.
TTL = 60


def _deploy(**overrides):
    """What one `pulumi up` changes for DKIM: the zones, and mx1's services step."""
    if "dkim" in overrides:
        overrides["dns"] = {**config.running_settings().dns.model_dump(by_alias=True), "ttl": TTL}
    s = config.running_settings(**overrides)
    stand.republish(s)
    ctx = config.context(s, config.load_or_make_secrets(s))
    step = next(st for st in deploy.plan(s) if st.name == f"services-{ctx.host_for('submission').role}")
    steps.run_step(ctx, step)
    return s


def _send(s) -> bytes:
    tok = _token()
    to = f"friend@{internet.OUTSIDE_DOMAIN}"
    with inside():
        c = LabSMTP(s.fqdn("smtp"), _host_ip("mx1"), 587)
        c.starttls(context=tls_context())
        c.ehlo()
        with c:
            c.login(SENDER, config.password(SENDER))
            c.send_message(message(SENDER, to, tok))
    wait_until(lambda: outside_messages(tok), 60, f"outside MTA to receive {tok}")
    raw = outside_messages(tok)[0]
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"X-Lab-"))


def _selector(raw: bytes) -> str:
    m = re.search(rb"^DKIM-Signature:.*?\bs=([a-z0-9-]+)", raw, re.M | re.S | re.I)
    return m.group(1).decode() if m else ""


def _verifies(raw: bytes) -> bool:
    import dkim as dkimpy

    return bool(dkimpy.verify(raw, dnsfunc=lab_dns_txt))


def _key_files() -> set[str]:
    out = machines.sh("mx1", "ls /var/lib/rspamd/dkim").stdout.split()
    return {f.removesuffix(".key").rsplit(".", 1)[-1] for f in out if f.endswith(".key")}


def s_dkim_rotation() -> str:
    """DKIM rotation: publish, wait, switch, grace, retire; mail signed before and after verifies."""
    signed: dict[str, bytes] = {}
    notes = []
    try:
        published_at = 0.0
        for label, clock, phase, signing, published in CLOCKS:
            if label == "switch":
                # A run right after the publish run (a missed window) must not switch.
                try:
                    _deploy(dkim={**ROTATION, "now": clock})
                    refused = ""
                except steps.StepFailed as e:
                    refused = str(e)
                _expect(
                    "refusing to sign with DKIM selector mail-g1" in refused,
                    f"switch {time.monotonic() - published_at:.0f}s after publishing was not refused: {refused[-300:]}",
                )
                _expect(
                    _selector(_send(config.running_settings())) == "mail",
                    "after the refused switch mail is not signed with the old key",
                )
                time.sleep(max(0.0, published_at + TTL + 2 - time.monotonic()))
                notes.append("switch refused within the TTL")
            s = _deploy(dkim={**ROTATION, "now": clock})
            if label == "publish":
                published_at = time.monotonic()
            _expect(dkim.plan(s).phase == phase, f"{label}: phase {dkim.plan(s).phase}, not {phase}")
            served = {sel for sel in ("mail", "mail-g1") if lab_dns_txt(f"{sel}._domainkey.example.org")}
            _expect(served == set(published), f"{label}: DNS serves {sorted(served)}, not {list(published)}")
            files = _key_files()
            _expect(files == set(published), f"{label}: mx1 holds keys {sorted(files)}, not {list(published)}")
            raw = _send(s)
            _expect(_selector(raw) == signing, f"{label}: signed with s={_selector(raw)!r}, not {signing}")
            _expect(_verifies(raw), f"{label}: new mail (s={signing}) does not verify")
            signed[label] = raw
            # Everything signed so far verifies while its selector is published ...
            for earlier, old in signed.items():
                if _selector(old) in published:
                    _expect(_verifies(old), f"{label}: mail from '{earlier}' (s={_selector(old)}) no longer verifies")
            notes.append(f"{label}: s={signing}, DNS {'+'.join(published)}")
        # ... and only then fails: the old selector is gone after the grace period.
        _expect(not _verifies(signed["before"]), "after the grace the retired selector still verifies")
    finally:
        # Back to the lab's own (non-rotating) settings for the other scenarios. That
        # re-publishes generation 0's retired key, which the guard rightly refuses to sign
        # with for a TTL; the lab skips the wait by making mx1 a fresh signer.
        machines.sh("mx1", "rm -f /etc/rspamd/local.d/dkim_signing.conf")
        _deploy()
    return "; ".join(notes) + "; the retired selector's record and key file gone after the grace"
