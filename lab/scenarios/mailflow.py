"""The mail-flow scenarios: inbound, submission, relay, spam and Sieve, each driving real
mail through the lab hosts."""

from __future__ import annotations

import re
import smtplib

from .. import config, internet, machines, outside_mta
from ..netns import inside
from ..util import wait_until
from .clients import (
    FORWARD,
    TEAM,
    LabSMTP,
    LabSMTPS,
    _expect,
    _host_ip,
    _imap_role,
    _s,
    _token,
    imap_count,
    inbound,
    machines_roles,
    message,
    outside_copy,
    outside_messages,
    outside_verdict,
    tls_context,
    verifier_bites,
    via_outside,
    wait_delivered,
    wait_imap,
)


def s_inbound() -> str:
    """(1) outside Postfix -> MX look-up -> mx1:25 STARTTLS -> user and alias -> IMAPS."""
    t1, t2, t3, t4 = _token(), _token(), _token(), _token()
    # One straight to mx1 from a client that checks mx1's certificate against Pebble's
    # roots; the rest as the internet sends them, through the outside Postfix.
    inbound("alice@example.org", t1)
    via_outside("alice@example.org", t4)
    via_outside(TEAM, t2)
    via_outside(FORWARD, t3)
    for to, tok in (("alice@example.org", t1), ("alice@example.org", t4), (TEAM, t2), (FORWARD, t3)):
        wait_delivered(to, tok)
    r = machines.sh(_imap_role(), f"grep -rl {t1} /var/vmail/example.org/alice/Maildir/ | head -1")
    _expect(r.stdout.strip() != "", f"{t1} not in /var/vmail/example.org/alice/Maildir")
    sent = [
        line
        for line in outside_mta.log_text().splitlines()
        if "status=sent" in line and f"relay={_s().fqdn('mx1')}" in line
    ]
    _expect(sent, "the outside Postfix logged no delivery to mx1 (MX 10)")
    tls = "TLS connection established to " + _s().fqdn("mx1")
    _expect(tls in outside_mta.log_text(), "the outside Postfix did not use STARTTLS to mx1")
    return (
        "user, alias (3 members) and forwarding alias (user + outside address) "
        "delivered through the outside Postfix (MX 10, STARTTLS); Maildir path and IMAPS checked"
    )


def s_submission() -> str:
    """(2) AUTH on 587 (STARTTLS) and 465, the outside verifier's SPF/DKIM/DMARC pass,
    spoofing (envelope or header From) refused."""
    s = _s()
    pw = config.password("alice@example.org")
    toks = []
    with inside():
        for port in (587, 465):
            tok = _token()
            toks.append(tok)
            if port == 587:
                c = LabSMTP(s.fqdn("smtp"), _host_ip("mx1"), 587)
                c.starttls(context=tls_context())
                c.ehlo()
            else:
                c = LabSMTPS(s.fqdn("smtp"), _host_ip("mx1"), 465)
                c.ehlo()
            with c:
                c.login("alice@example.org", pw)
                c.send_message(message("alice@example.org", f"friend@{internet.OUTSIDE_DOMAIN}", tok))
        # spoofed envelope sender
        c = _submission(s, "alice@example.org")
        try:
            c.sendmail(
                "bob@example.org",
                [f"friend@{internet.OUTSIDE_DOMAIN}"],
                message("bob@example.org", f"friend@{internet.OUTSIDE_DOMAIN}", _token()).as_bytes(),
            )
            spoof = None
        except (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as e:
            spoof = e
        finally:
            c.close()
    _expect(spoof is not None, "spoofed envelope sender bob@ accepted for alice's login")
    # spoofed header From with alice's own envelope sender (docs/hardening.md)
    with inside():
        c = _submission(s, "alice@example.org")
        try:
            c.sendmail(
                "alice@example.org",
                [f"friend@{internet.OUTSIDE_DOMAIN}"],
                message("bob@example.org", f"friend@{internet.OUTSIDE_DOMAIN}", _token()).as_bytes(),
            )
            from_spoof = None
        except smtplib.SMTPDataError as e:
            from_spoof = e
        finally:
            c.close()
    _expect(
        from_spoof is not None and from_spoof.smtp_code == 550,
        f"header From: bob@ accepted for alice's login ({from_spoof!r})",
    )
    limited = _over_the_sending_limit(s)
    peers = set()
    for tok in toks:
        raw = outside_copy(tok)
        peers.add(re.search(rb"^X-Lab-Peer: (\S+)", raw, re.M).group(1).decode())
        # What the receiving site's own verifier (OpenDKIM, OpenDMARC) recorded on arrival.
        verdict = outside_verdict(raw)
        _expect(
            verdict == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}, f"{tok}: the outside verifier says {verdict}"
        )
    bites = verifier_bites(raw, "alice@example.org")
    return (
        f"587+465 delivered from {', '.join(sorted(peers))} with spf=pass dkim=pass dmarc=pass "
        f"at the outside verifier ({bites}); "
        f"spoof refused ({getattr(spoof, 'smtp_code', '?')}), header From spoof refused (550); "
        f"{limited}"
    )


def _submission(s, user: str) -> LabSMTP:
    """A session on mx1:587 after STARTTLS, logged in as `user` (inside the lab)."""
    c = LabSMTP(s.fqdn("smtp"), _host_ip("mx1"), 587)
    c.starttls(context=tls_context())
    c.ehlo()
    c.login(user, config.password(user))
    return c


def _over_the_sending_limit(s) -> str:
    """A login that sends to more recipients in an hour than `limits.sendPerUserPerHour`
    gets 451 from the real Rspamd ratelimit, and the postmaster's mailbox gets the note
    (docs/hardening.md). carol sends nothing else in the lab. Rspamd lets a message into
    an empty bucket whatever its size and counts its recipients afterwards, so the
    second message at the latest is refused (the first too on a rerun within the hour)."""
    user, n = "carol@example.net", s.limits.send_per_user_per_hour + 1
    rcpts = [f"limit{i}@{internet.OUTSIDE_DOMAIN}" for i in range(n)]
    answers = []
    with inside():
        for _ in range(2):
            c = _submission(s, user)
            try:
                c.sendmail(user, rcpts, message(user, rcpts[0], _token()).as_bytes())
                answers.append(250)
            except smtplib.SMTPDataError as e:
                _expect(
                    e.smtp_code == 451 and b"Sending limit reached" in e.smtp_error, f"{user} over the limit: {e!r}"
                )
                answers.append(451)
                break
            finally:
                c.close()
    _expect(answers[-1] == 451, f"{user} sent {len(answers)} messages to {n} recipients each, none refused")
    postmaster = f"postmaster@{s.primary_domain}"
    box = next((a.to[0] for a in s.all_aliases if a.address == postmaster), postmaster)
    wait_imap(box, f"Sending limit reached by {user}", timeout=90)
    return f"{user} to {n} recipients: {' then '.join(map(str, answers))}, the postmaster's note in {box}'s INBOX"


# Relay tricks an open relay falls for: each must be refused without AUTH.
RELAY_VARIANTS = [
    ("plain", "x@{out}", "victim@elsewhere.example.com"),
    ("%-hack", "x@{out}", "victim%elsewhere.example.com@{dom}"),
    ("quoted local part", "x@{out}", '"victim@elsewhere.example.com"@{dom}'),
    ("source route", "x@{out}", "@{dom}:victim@elsewhere.example.com"),
    ("bang path", "x@{out}", "elsewhere.example.com!victim@{dom}"),
    ("null sender", "", "victim@elsewhere.example.com"),
    ("our domain as sender", "alice@{dom}", "victim@elsewhere.example.com"),
]


def _relay_refused(c: smtplib.SMTP, sender: str, rcpt: str) -> int:
    """RCPT's code (MAIL's if MAIL itself is refused); the transaction is reset."""
    code, _ = c.mail(sender)
    if code < 400:
        try:
            code, _ = c.rcpt(rcpt)
        except smtplib.SMTPServerDisconnected:
            raise
    c.rset()
    return code


def s_no_open_relay() -> str:
    """(6) no relay without AUTH (plain, %-hack, quoted, source route, null sender...) on
    mx1/mx2 port 25 and 587; no AUTH before STARTTLS."""
    s = _s()
    dom = s.primary_domain
    notes = []
    with inside():
        for role in [r for r in ("mx1", "mx2") if r in machines_roles()]:
            with LabSMTP(s.fqdn(role), _host_ip(role), 25) as c:
                c.ehlo()
                _expect(not c.has_extn("auth"), f"{role}:25 offers AUTH before STARTTLS")
                for name, sender, rcpt in RELAY_VARIANTS:
                    sender, rcpt = (x.format(out=internet.OUTSIDE_DOMAIN, dom=dom) for x in (sender, rcpt))
                    code = _relay_refused(c, sender, rcpt)
                    _expect(code >= 500, f"{role}:25 accepts {name} relay to {rcpt!r} ({code})")
                notes.append(f"{role}:25 {len(RELAY_VARIANTS)} variants refused")
        with LabSMTP(s.fqdn("smtp"), _host_ip("mx1"), 587) as c:
            c.ehlo()
            _expect(not c.has_extn("auth"), "587 offers AUTH before STARTTLS")
            c.starttls(context=tls_context())
            c.ehlo()
            _expect(c.has_extn("auth"), "587 offers no AUTH after STARTTLS")
            for name, sender, rcpt in RELAY_VARIANTS:
                sender, rcpt = (x.format(out=internet.OUTSIDE_DOMAIN, dom=dom) for x in (sender, rcpt))
                try:
                    code = _relay_refused(c, sender, rcpt)
                except smtplib.SMTPException as e:
                    code = getattr(e, "smtp_code", 550)
                _expect(code >= 500, f"587 without AUTH accepts {name} relay ({code})")
            notes.append("587 unauthenticated: all refused")
    return ", ".join(notes)


def s_spam() -> str:
    """(3) GTUBE is rejected at DATA; a spammy-but-not-rejected message lands in Junk."""
    # A line after the pattern: filter-rspamd drops the body's final newline, and rspamd
    # only looks for GTUBE in a text part longer than the pattern itself.
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\nThis is a test.\n"
    try:
        inbound("alice@example.org", _token(), body=gtube)
        code = None
    except smtplib.SMTPDataError as e:
        code = e.smtp_code
    _expect(code is not None and code >= 500, f"GTUBE not rejected (got {code})")
    # rspamd's "add header" test string (mailstack:spam.testPatterns, on in the lab): the
    # verdict is add_header, so the message is accepted with X-Spam: Yes, and Dovecot's
    # sieve_before script files it in Junk.
    spammy = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\nThis is a test.\n"
    tok = _token()
    inbound("alice@example.org", tok, body=spammy)
    wait_imap("alice@example.org", tok, mailbox="Junk")
    _expect(imap_count("alice@example.org", tok) == 0, f"{tok} is in INBOX as well as Junk")
    return f"GTUBE rejected with {code}; add-header test message filed in Junk"


def s_sieve() -> str:
    """(extra) a user's Sieve redirect leaves imap through mx1 and reaches the outside."""
    user, home = "bob@example.org", "/var/vmail/example.org/bob"
    target = f"friend@{internet.OUTSIDE_DOMAIN}"
    script = f'require ["copy"];\nredirect :copy "{target}";\n'
    machines.sh(
        _imap_role(),
        (
            f"install -d -o vmail -g vmail -m 0700 {home}/sieve && "
            f"printf '%s' '{script}' > {home}/sieve/lab.sieve && "
            f"chown vmail:vmail {home}/sieve/lab.sieve && "
            f"ln -sfn sieve/lab.sieve {home}/.dovecot.sieve && chown -h vmail:vmail {home}/.dovecot.sieve"
        ),
    )
    try:
        tok = _token()
        inbound(user, tok)
        wait_imap(user, tok)  # :copy keeps it in the mailbox too
        wait_until(lambda: outside_messages(tok), 90, f"redirected {tok} at the outside MTA")
        raw = outside_messages(tok)[0]
        rcpt = re.search(rb"^X-Lab-Rcpt-To: (.*)$", raw, re.M).group(1).decode().strip()
        _expect(rcpt == target, f"redirect went to {rcpt!r}")
    finally:
        machines.sh(_imap_role(), f"rm -f {home}/.dovecot.sieve {home}/sieve/lab.sieve")
    return f"Sieve redirect of {user}'s mail reached {target} through mx1"
