"""The `status` scenario: `mailstack status` on the healthy lab has no error; each fault
injected here turns exactly its checks to error, and repairing it turns them back.

A fault lists the check ids (prefixes) it must turn to error: one or several checks when
one cause is seen from several sides (smtpd down closes its ports and its TLS and SMTP
checks too). Each prefix must match an error and every error must match a prefix."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from dataclasses import dataclass

from mailstack import backup, tls
from mailstack.postgresql import PG_VERSION
from mailstack.status import engine, model, timer

from .. import config, internet, machines, net, pki, stand
from .. import status as lab_status
from ..netns import inside
from ..util import log, wait_until
from .clients import LabSMTP, _expect, _s, copies, imap_session, machines_roles, tls_context

ATTEMPTS = 6  # full status runs while waiting for a fault to show (or go)
FAULT_PORT = 8080  # a port opened on mx2 by the "port opened" fault
TLS_DIR = "/etc/mailstack/tls"


@dataclass
class Fault:
    name: str
    expect: tuple[str, ...]  # check-id prefixes that must turn to error
    inject: Callable[[], None]
    repair: Callable[[], None]
    extra_ca: str = ""
    # Lines the daily job's mail must carry once the fault is in, and once it is repaired.
    daily: tuple[str, str] | None = None


def _sh(role: str, script: str) -> str:
    r = machines.sh(role, script, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{role}: `{script[:80]}` failed: {r.stderr.strip()[-300:]}")
    return r.stdout


def _knot(**tweaks) -> None:
    stand.republish(_s(), **tweaks)


def _errors(checks: list[model.Check]) -> set[str]:
    return {c.id for c in checks if c.status == model.ERROR}


def _matches(errors: set[str], prefixes: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(errors no prefix explains, prefixes no error matches)"""
    extra = {e for e in errors if not any(e.startswith(p) for p in prefixes)}
    unmet = {p for p in prefixes if not any(e.startswith(p) for e in errors)}
    return extra, unmet


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Could a check be expected in error by both (one prefix starts the other)?"""
    return any(x.startswith(y) or y.startswith(x) for x in a for y in b)


def _run(extra_ca: str = "") -> list[model.Check]:
    return engine.run(lab_status.environment(extra_ca))


def _wait(want: tuple[str, ...], extra_ca: str, what: str) -> list[model.Check]:
    """Rerun the checks (bounded) until exactly `want` is in error."""
    for attempt in range(ATTEMPTS):
        checks = _run(extra_ca)
        extra, unmet = _matches(_errors(checks), want)
        if not extra and not unmet:
            return checks
        log(
            f"status {what}: attempt {attempt + 1}: unexpected errors {sorted(extra)}, not yet in error {sorted(unmet)}"
        )
    raise AssertionError(
        f"{what}: errors not explained by the fault {sorted(extra)}; expected but not in error {sorted(unmet)}"
    )


# ------------------------------------------------------------------ the daily job


def _daily_mails() -> list[str]:
    """Bodies of the daily status mails in the postmaster's mailbox, oldest first."""
    box = copies(f"postmaster@{_s().primary_domain}")[0][0]
    with imap_session(box) as c:
        c.select("INBOX", readonly=True)
        typ, data = c.search(None, "SUBJECT", f'"mailstack status on {_s().fqdn("mx1")}"')
        out = []
        for num in data[0].split() if typ == "OK" and data[0] else []:
            typ, msg = c.fetch(num, "(BODY.PEEK[])")
            parsed = email.message_from_bytes(msg[0][1], policy=email.policy.default)
            out.append(parsed.get_content())
        return out


def _daily(want: str | None = None) -> None:
    """Run mx1's daily job now (its timer's service); with `want`, the postmaster must get
    a mail that carries that line."""
    before = len(_daily_mails())
    _sh("mx1", "systemctl start mailstack-status.service")
    if want is None:
        return
    wait_until(lambda: len(_daily_mails()) > before, 60, "the daily status mail")
    body = _daily_mails()[-1]
    if want not in body:
        raise AssertionError(f"daily mail lacks {want!r}:\n{body}")


# ------------------------------------------------------------------ faults


def _short_cert() -> tuple[str, str, str]:
    """(ca pem, cert chain pem, key pem): a CA the status run trusts, and a certificate for
    imap's names that expires in 3 days."""
    issuer = pki.ca("mailstack lab short-lived CA")
    key, cert = pki.leaf(issuer, tls.certificate_names(_s(), machines_host("imap")), days=3)
    return pki.pem(issuer[1]), pki.pem(cert) + pki.pem(issuer[1]), pki.pem_key(key)


def machines_host(role: str):
    from mailstack import hosts as H

    return H.hosts(_s())[role]


def _fill_queue() -> None:
    """mx2 holds mail (its relay to mx1 paused) and gets QUEUE_COUNT_ERROR messages."""
    from mailstack.status import decide

    _sh("mx2", "smtpctl pause mta")
    s = _s()
    with inside():
        with LabSMTP(s.fqdn("mx2"), net.public_v4("mx2"), 25) as c:
            c.starttls(context=tls_context())
            c.ehlo()
            for i in range(decide.QUEUE_COUNT_ERROR):
                c.sendmail(
                    f"sender@{internet.OUTSIDE_DOMAIN}",
                    ["alice@example.org"],
                    f"Subject: status queue {i}\r\n\r\nheld on mx2\r\n",
                )


def _ptr_of_mx2(name: str | None) -> None:
    """Serve another PTR for mx2's IPv4 (None: the right one again), and drop mx1's cached
    answer for it: the reverse zone's TTL is an hour, which the lab does not wait out."""
    ip = net.public_v4("mx2")
    _knot(ptr_names={ip: name} if name else None)
    _sh("mx1", f"unbound-control flush {'.'.join(reversed(ip.split('.')))}.in-addr.arpa")


def faults() -> list[Fault]:
    s = _s()
    v4 = net.public_v4
    unit_pg = f"postgresql@{PG_VERSION}-main"
    ca, chain, key = _short_cert()
    return [
        Fault(
            "replica stopped",
            ("services: mx2 " + unit_pg, "replication: mx2 streaming"),
            lambda: _sh("mx2", f"systemctl stop {unit_pg}"),
            lambda: _sh("mx2", f"systemctl start {unit_pg}"),
            daily=("error replication: mx2 streaming: was ok", "ok    replication: mx2 streaming: was error"),
        ),
        Fault(
            "DNS record removed",
            (f"dns: _smtp._tls.{s.primary_domain} TXT",),
            lambda: _knot(drop=((f"_smtp._tls.{s.primary_domain}.", "TXT"),)),
            lambda: _knot(),
        ),
        # mx1 refuses mx2's IPv4 at connect now (550 5.7.25), as it would any server
        # whose rDNS does not confirm: mx2's view of mx1's port 25 over IPv4 says so.
        Fault(
            "PTR of mx2 changed",
            (f"rdns: mx2 v4 {v4('mx2')}", "peer: mx2→mx1 v4 :25 "),
            lambda: _ptr_of_mx2(f"static-13.{internet.OUTSIDE_DOMAIN}."),
            lambda: _ptr_of_mx2(None),
        ),
        # Opened at both layers (the host's nftables and its Hetzner firewall at the edge),
        # as an operator would have to, so the outside sees it.
        Fault(
            "port opened on mx2",
            ("ports: mx2 v4", "ports: mx2 v6", "peer: mx1→mx2 v4 ports", "peer: mx1→mx2 v6 ports"),
            lambda: (
                _sh(
                    "mx2",
                    f"nft insert rule inet filter input tcp dport {FAULT_PORT} accept && "
                    f"systemd-run -q --unit=lab-status-listener python3 -m http.server "
                    f"--bind :: {FAULT_PORT}",
                ),
                net.edge_open("mx2", FAULT_PORT),
            ),
            lambda: (
                _sh("mx2", "systemctl stop lab-status-listener; nft -f /etc/nftables.conf"),
                net.edge_up(s, config.addresses(s)),
            ),
        ),
        Fault(
            "smtpd stopped on mx1",
            (
                "services: mx1 opensmtpd",
                "ports: mx1 v4",
                "ports: mx1 v6",
                "tls: mx1:25",
                "tls: mx1:465",
                "tls: mx1:587",
                "smtp: mx1:25 ",
                "smtp: mx1:465",
                "smtp: mx1:587",
                *(
                    f"peer: mx2→mx1 {fam} {what}"
                    for fam in ("v4", "v6")
                    for what in ("ports", ":25 ", ":465 ", ":587 ")
                ),
            ),
            lambda: _sh("mx1", "systemctl stop opensmtpd"),
            lambda: _sh("mx1", "systemctl start opensmtpd"),
        ),
        Fault(
            "mail stuck in mx2's queue",
            ("queue: mx2",),
            _fill_queue,
            lambda: _sh("mx2", "smtpctl remove all >/dev/null; smtpctl resume mta"),
        ),
        Fault(
            "certificate close to expiry",
            ("tls: imap:993", "tls: imap:4190"),
            lambda: _sh(
                "imap",
                f"cp -a {TLS_DIR}/fullchain.pem {TLS_DIR}/fullchain.pem.status && "
                f"cp -a {TLS_DIR}/privkey.pem {TLS_DIR}/privkey.pem.status && "
                f"cat > {TLS_DIR}/fullchain.pem <<'E1'\n{chain}E1\n"
                f"cat > {TLS_DIR}/privkey.pem <<'E2'\n{key}E2\n"
                "systemctl reload dovecot",
            ),
            lambda: _sh(
                "imap",
                f"mv {TLS_DIR}/fullchain.pem.status {TLS_DIR}/fullchain.pem && "
                f"mv {TLS_DIR}/privkey.pem.status {TLS_DIR}/privkey.pem && "
                "systemctl reload dovecot",
            ),
            extra_ca=ca,
        ),
        Fault(
            "full disk",
            ("disk: imap mail",),
            lambda: _sh(
                "imap",
                "mkdir -p /run/lab-status && mount -t tmpfs -o size=1m lab-status /run/lab-status"
                " && mount --bind /run/lab-status /var/vmail"
                " && (dd if=/dev/zero of=/var/vmail/.fill bs=64k 2>/dev/null || true)",
            ),
            lambda: _sh("imap", "umount /var/vmail && umount /run/lab-status"),
        ),
        Fault(
            "address on a DNSBL",
            (f"dnsbl: mx2 {v4('mx2')} {internet.DNSBL_ZONE}",),
            lambda: _knot(dnsbl_listed={v4("mx2"): "127.0.0.2"}),
            lambda: _knot(),
        ),
    ]


def s_status() -> str:
    """(status) mailstack status: healthy lab all ok; each fault errors exactly its checks, then ok again."""
    if "mx2" not in machines_roles():
        return "skipped: the faults need the ha topology"
    _knot()  # the lab DNSBL zone, also on a lab that came up before it existed
    # A deployed stack has run its nightly backup: so has the lab, before it is judged.
    for role in backup.hosts(_s()):
        r = machines.sh(role, f"systemctl start {backup.UNIT}.service", timeout=600)
        _expect(r.returncode == 0, f"{role}: the backup did not run: {r.stderr[-500:]}")
    base = _wait((), "", "healthy lab")
    warned = {c.id for c in base if c.status == model.WARN}
    # `lab status` exits 0 on a healthy lab: no error and no warning either.
    _expect(
        not warned,
        "the healthy lab has warnings: "
        + "; ".join(f"{c.id}: {c.found}" for c in base if c.status == model.WARN)[:1500],
    )
    _daily()  # the daily job's reference run: as clean as the healthy lab (its view of mx2 too)
    last = model.from_json(_sh("mx1", f"cat {timer.STATE_FILE}"))
    _expect(
        model.exit_code(last) == 0,
        "the daily job finds problems on the healthy lab: "
        + "; ".join(f"{c.id}: {c.found}" for c in last if c.status != model.OK)[:1500],
    )
    done = []
    fs = faults()
    for i, f in enumerate(fs):
        log(f"status: injecting '{f.name}'")
        try:
            f.inject()
            checks = _wait(f.expect, f.extra_ca, f"fault '{f.name}'")
            if f.daily:
                _daily(f.daily[0])
        finally:
            f.repair()
        # The next fault's run must find exactly its own errors, so it also shows this
        # fault's checks ok again; a run of its own only where that would not show it.
        nxt = fs[i + 1] if i + 1 < len(fs) else None
        if f.daily or nxt is None or _overlap(f.expect, nxt.expect):
            _wait((), "", f"after repairing '{f.name}'")
        if f.daily:
            _daily(f.daily[1])
        done.append(f"{f.name}: {len(_errors(checks))} error(s)" + (", daily mail" if f.daily else ""))
    return f"healthy: {len(base)} checks, 0 errors, {len(warned)} warnings; " + "; ".join(done)
