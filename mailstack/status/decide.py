"""Pure decisions: what was observed, what should be, and how bad the difference is.

No I/O here: every function takes plain data and returns (status, expected, found), so
each one has unit tests (tests/test_status.py). Thresholds live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import ERROR, OK, WARN

Verdict = tuple[str, str, str]  # status, expected, found

# Certificates: days left before expiry (ACME renews at 30).
CERT_WARN_DAYS = 21
CERT_ERROR_DAYS = 7
# Replication lag on the primary's side (pg_stat_replication).
LAG_BYTES_WARN = 16 * 2**20
LAG_BYTES_ERROR = 256 * 2**20
LAG_SECONDS_WARN = 60
LAG_SECONDS_ERROR = 600
# WAL a replication slot keeps on the primary.
SLOT_RETAINED_WARN = 1 * 2**30
SLOT_RETAINED_ERROR = 4 * 2**30
# Mail queue: number of messages, age of the oldest one (seconds).
QUEUE_COUNT_WARN = 10
QUEUE_COUNT_ERROR = 50
QUEUE_AGE_WARN = 30 * 60
QUEUE_AGE_ERROR = 4 * 3600
# Disk use in percent.
DISK_WARN_PCT = 80
DISK_ERROR_PCT = 90
# Last backup: age in hours.
BACKUP_WARN_HOURS = 26
BACKUP_ERROR_HOURS = 50
# Spamhaus answers that mean "query refused", not "listed" (open/public resolver,
# typing error, over quota): https://www.spamhaus.org/faqs/domain-blocklist/
DNSBL_REFUSED = frozenset({"127.255.255.252", "127.255.255.254", "127.255.255.255"})
HETZNER_UNBLOCK = (
    "new Hetzner projects cannot send on port 25: open a support request "
    "in the Cloud Console asking to unblock outbound port 25 (after the first "
    "paid invoice)"
)


def _set(values: Iterable[str]) -> str:
    v = sorted(values)
    return ", ".join(v) if v else "nothing"


def rrset(expected: Iterable[str], found: Iterable[str] | None, error: str | None = None) -> Verdict:
    """A DNS RRset: exactly the expected values (normalised by the caller)."""
    exp = set(expected)
    if error:
        return ERROR, _set(exp), error
    got = set(found or ())
    if got == exp:
        return OK, _set(exp), _set(got)
    parts = []
    if exp - got:
        parts.append("missing " + _set(exp - got))
    if got - exp:
        parts.append("unexpected " + _set(got - exp))
    return ERROR, _set(exp), "; ".join(parts)


def ptr(ip: str, expected_name: str, ptr_names: Iterable[str], forward: Iterable[str]) -> Verdict:
    """Reverse DNS of `ip` names the host, and that name resolves back to `ip`."""
    names = {n.lower() for n in ptr_names}
    exp = f"PTR {expected_name}, which resolves back to {ip}"
    if names != {expected_name.lower()}:
        return ERROR, exp, f"PTR {_set(names)}"
    if ip not in set(forward):
        return ERROR, exp, f"PTR {expected_name}, but it resolves to {_set(forward)}"
    return OK, exp, f"PTR {expected_name} -> {ip}"


def delegation(expected: Iterable[str], found: Iterable[str] | None, error: str | None = None) -> Verdict:
    norm = lambda xs: {x.lower().rstrip(".") + "." for x in xs}
    return rrset(norm(expected), norm(found or ()), error)


def ports(expected_open: Iterable[int], found_open: Iterable[int]) -> Verdict:
    """The open-port matrix equals the firewall rules exactly."""
    exp, got = set(expected_open), set(found_open)
    fmt = lambda ps: " ".join(str(p) for p in sorted(ps)) or "none"
    if exp == got:
        return OK, fmt(exp), fmt(got)
    parts = []
    if got - exp:
        parts.append(f"open but not in the firewall rules: {fmt(got - exp)}")
    if exp - got:
        parts.append(f"closed: {fmt(exp - got)}")
    return ERROR, fmt(exp), "; ".join(parts)


def certificate(
    names: Iterable[str], days_left: float | None, cert_names: Iterable[str], verify_error: str | None
) -> Verdict:
    """Trusted, valid for every name the host serves, and far from expiry."""
    need = sorted(names)
    shown = ", ".join(need) if len(need) <= 2 else f"{need[0]} and {len(need) - 1} more names"
    exp = f"trusted, valid for {shown}, > {CERT_WARN_DAYS} days left"
    if days_left is None:
        return ERROR, exp, verify_error or "no certificate"
    have = {n.lower() for n in cert_names}
    missing = [n for n in need if not _covered(n, have)]
    found = f"{days_left:.0f} days left"
    if verify_error:
        return ERROR, exp, f"not trusted ({verify_error}); {found}"
    if missing:
        return ERROR, exp, f"not valid for {', '.join(missing)}; {found}"
    if days_left < CERT_ERROR_DAYS:
        return ERROR, exp, f"expires in {days_left:.1f} days"
    if days_left < CERT_WARN_DAYS:
        return WARN, exp, f"expires in {days_left:.1f} days"
    return OK, exp, found


def _covered(name: str, have: set[str]) -> bool:
    name = name.lower()
    return name in have or ("." in name and "*." + name.split(".", 1)[1] in have)


def banner(expected_name: str, line: str | None, error: str | None = None) -> Verdict:
    """The greeting alone: a session that breaks after a good one is the STARTTLS and
    relay checks' business, and a refusal shows its own reply (e.g. 550 5.7.25)."""
    exp = f"220 {expected_name} ..."
    if not line:
        return ERROR, exp, error or "no greeting"
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith("220") and parts[1].lower() == expected_name.lower():
        return OK, exp, line.strip()
    return ERROR, exp, line.strip()


def vantage_refused(greeting: str | None) -> bool:
    """mx1/mx2 drop clients without forward-confirmed rDNS at connect (550 5.7.25): from
    an operator's home line the port-25 session can't be judged, only from a mail host."""
    return greeting is not None and greeting.startswith("550") and "5.7.25" in greeting


def not_judged(what: str, greeting: str) -> Verdict:
    return WARN, what, f"not judged from here: {greeting.strip()[:100]} (see the mx1<->mx2 checks)"


def starttls(
    features: Iterable[str] | None, tls_ok: bool, auth_after_tls: bool | None = None, error: str | None = None
) -> Verdict:
    """STARTTLS offered, AUTH hidden before TLS (and offered after it on submission:
    auth_after_tls is None where AUTH must not appear at all)."""
    exp = "STARTTLS offered, no AUTH before TLS" + (", AUTH after TLS" if auth_after_tls is not None else "")
    if error or features is None:
        return ERROR, exp, error or "no EHLO answer"
    feats = {f.split()[0].upper() for f in features if f.strip()}
    problems = []
    if "STARTTLS" not in feats:
        problems.append("no STARTTLS")
    if "AUTH" in feats:
        problems.append("AUTH offered before TLS")
    if "STARTTLS" in feats and not tls_ok:
        problems.append("TLS handshake failed")
    if auth_after_tls is False:
        problems.append("no AUTH after TLS")
    if problems:
        return ERROR, exp, "; ".join(problems)
    return OK, exp, "as expected"


def relay(rcpt_reply: int | None, error: str | None = None) -> Verdict:
    """An outside sender to an outside recipient must be refused at RCPT."""
    exp = "RCPT to a foreign domain refused (4xx/5xx)"
    if rcpt_reply is None:
        return ERROR, exp, error or "no answer"
    if rcpt_reply >= 400:
        return OK, exp, f"refused with {rcpt_reply}"
    return ERROR, exp, f"accepted with {rcpt_reply}: OPEN RELAY"


def mta_sts(expected_policy: str, status: int | None, body: str | None, error: str | None = None) -> Verdict:
    exp = "HTTP 200 with the rendered policy (" + expected_policy.strip().replace("\r\n", "; ") + ")"
    if error or status is None:
        return ERROR, exp, error or "no answer"
    if status != 200:
        return ERROR, exp, f"HTTP {status}"
    norm = lambda t: [line.strip() for line in t.strip().splitlines()]
    if norm(body or "") != norm(expected_policy):
        return ERROR, exp, "policy differs: " + (body or "").strip().replace("\r\n", "; ").replace("\n", "; ")
    return OK, exp, "HTTP 200, same policy"


def dnsbl(answers: list[str] | None, error: str | None = None) -> Verdict:
    """answers: A records of the query name; [] = not listed; None + error = no answer."""
    exp = "not listed"
    if answers is None:
        return WARN, exp, f"unknown ({error or 'no answer'})"
    if not answers:
        return OK, exp, "not listed"
    if set(answers) <= DNSBL_REFUSED:
        return WARN, exp, f"unknown: query refused ({_set(answers)}); the resolver is not accepted"
    return ERROR, exp, f"LISTED ({_set(answers)})"


def service(active_state: str | None, n_restarts: int | None) -> Verdict:
    exp = "active, 0 restarts"
    if active_state != "active":
        return ERROR, exp, f"{active_state or 'unknown'}"
    if n_restarts:
        return WARN, exp, f"active, restarted {n_restarts} times since boot"
    return OK, exp, "active, 0 restarts"


def _level(value: float, warn: float, error: float) -> str:
    return ERROR if value >= error else WARN if value >= warn else OK


def replication(state: str | None, lag_bytes: int | None, lag_seconds: float | None) -> Verdict:
    exp = f"streaming, lag < {LAG_BYTES_WARN // 2**20} MiB and < {LAG_SECONDS_WARN} s"
    if state != "streaming":
        return ERROR, exp, state or "not connected to the primary"
    b, s = lag_bytes or 0, lag_seconds or 0.0
    st = max(
        _level(b, LAG_BYTES_WARN, LAG_BYTES_ERROR),
        _level(s, LAG_SECONDS_WARN, LAG_SECONDS_ERROR),
        key=[OK, WARN, ERROR].index,
    )
    return st, exp, f"streaming, lag {b} bytes, {s:.1f} s"


def slot(active: bool | None, retained_bytes: int | None) -> Verdict:
    exp = f"slot exists and active, retained WAL < {SLOT_RETAINED_WARN // 2**20} MiB"
    if active is None:
        return ERROR, exp, "no such slot"
    r = retained_bytes or 0
    st = _level(r, SLOT_RETAINED_WARN, SLOT_RETAINED_ERROR)
    found = f"{'active' if active else 'inactive'}, retains {r // 2**20} MiB"
    if not active and st == OK:
        st = WARN  # the replica is away; the replication check says why
    return st, exp, found


def queue(count: int | None, oldest_age: float | None, error: str | None = None) -> Verdict:
    exp = f"< {QUEUE_COUNT_WARN} messages, oldest < {QUEUE_AGE_WARN // 60} min"
    if count is None:
        return ERROR, exp, error or "queue not readable"
    age = oldest_age or 0.0
    st = max(
        _level(count, QUEUE_COUNT_WARN, QUEUE_COUNT_ERROR),
        _level(age, QUEUE_AGE_WARN, QUEUE_AGE_ERROR),
        key=[OK, WARN, ERROR].index,
    )
    return st, exp, f"{count} messages" + (f", oldest {age / 60:.0f} min" if count else "")


def disk(used_pct: float | None, error: str | None = None) -> Verdict:
    exp = f"< {DISK_WARN_PCT}% used"
    if used_pct is None:
        return ERROR, exp, error or "not measured"
    return _level(used_pct, DISK_WARN_PCT, DISK_ERROR_PCT), exp, f"{used_pct:.0f}% used"


def backup(status: dict | None, now: float) -> Verdict:
    """status: the backup job's status file (issue 9: `last_run` {time, result ok|failed|
    running, error}, `last_success` {time, ...}, times ISO 8601 UTC), or None."""
    exp = f"last backup ok, < {BACKUP_WARN_HOURS} h old"
    if status is None:
        # Configured, but the first scheduled run has not happened yet (a fresh host).
        return WARN, exp, "no backup has run yet"
    try:
        run = status.get("last_run") or {}
        good = status.get("last_success")
        good_age = (now - _epoch(good["time"])) / 3600 if good else None
    except (AttributeError, KeyError, TypeError, ValueError):
        return ERROR, exp, "status file unreadable"
    if run.get("result") == "failed":
        return (
            ERROR,
            exp,
            f"last run failed: {str(run.get('error', '?'))[:100]}"
            + (f"; last good {good_age:.0f} h ago" if good_age is not None else ""),
        )
    if good_age is None:
        return ERROR, exp, "no successful backup yet"
    return _level(good_age, BACKUP_WARN_HOURS, BACKUP_ERROR_HOURS), exp, f"ok, {good_age:.1f} h ago"


def _epoch(iso: str) -> float:
    import datetime

    t = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return t.timestamp()


def updates(security: int | None, reboot_required: bool) -> Verdict:
    exp = "no pending security updates, no reboot required"
    if security is None:
        return WARN, exp, "apt could not tell"
    problems = []
    if security:
        problems.append(f"{security} security updates pending")
    if reboot_required:
        problems.append("reboot required")
    return (WARN if problems else OK), exp, "; ".join(problems) or "none"


def outbound(target: str, banner_line: str | None, error: str | None) -> Verdict:
    exp = f"mx1 reaches {target} on port 25"
    if banner_line and banner_line.startswith("220"):
        return OK, exp, banner_line.strip()[:80]
    return ERROR, exp, f"{error or banner_line or 'no greeting'}; if this is Hetzner: {HETZNER_UNBLOCK}"


def dkim_key(in_use: str | None, published: str | None) -> Verdict:
    """The public half of the signing key on the server vs the p= that DNS serves."""
    exp = "signing key's public half equals the published p="
    if not in_use:
        return ERROR, exp, "no signing key on the server"
    if not published:
        return ERROR, exp, "no DKIM record published"
    if in_use == published:
        return OK, exp, f"match (sha256 {_fingerprint(in_use)})"
    return ERROR, exp, f"mismatch: server sha256 {_fingerprint(in_use)}, DNS sha256 {_fingerprint(published)}"


def _fingerprint(b64: str) -> str:
    import hashlib

    return hashlib.sha256(b64.encode()).hexdigest()[:16]


def dkim_p(txt: str) -> str | None:
    """The p= tag of a DKIM record's text."""
    for tag in txt.split(";"):
        k, _, v = tag.strip().partition("=")
        if k.strip() == "p":
            return "".join(v.split())
    return None
