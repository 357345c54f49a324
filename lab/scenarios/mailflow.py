"""The mail-flow scenarios: inbound, submission, relay, spam, backup MX, replication,
Sieve, redeploy and reboot, each driving real mail through the lab hosts."""
from __future__ import annotations

import re
import smtplib
import time

from .. import config, internet, machines, outside_mta, steps
from ..netns import inside
from ..util import wait_until
from .clients import (
    FORWARD,
    SUBADDRESS,
    LabSMTP,
    LabSMTPS,
    TEAM,
    _expect,
    _host_ip,
    _imap_login_ok,
    _imap_role,
    _port_open,
    _s,
    _token,
    copies,
    imap_count,
    inbound,
    lab_dns_txt,
    machines_roles,
    message,
    outside_messages,
    spf_check,
    tls_context,
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
    sent = [line for line in outside_mta.log_text().splitlines()
            if "status=sent" in line and f"relay={_s().fqdn('mx1')}" in line]
    _expect(sent, "the outside Postfix logged no delivery to mx1 (MX 10)")
    tls = "TLS connection established to " + _s().fqdn("mx1")
    _expect(tls in outside_mta.log_text(), "the outside Postfix did not use STARTTLS to mx1")
    return ("user, alias (3 members) and forwarding alias (user + outside address) "
            "delivered through the outside Postfix (MX 10, STARTTLS); Maildir path and IMAPS checked")


def s_submission() -> str:
    """(2) AUTH on 587 (STARTTLS) and 465, DKIM verifies in lab DNS, spoofing (envelope
    or header From) refused."""
    import dkim
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
            c.sendmail("bob@example.org", [f"friend@{internet.OUTSIDE_DOMAIN}"],
                       message("bob@example.org", f"friend@{internet.OUTSIDE_DOMAIN}", _token()).as_bytes())
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
            c.sendmail("alice@example.org", [f"friend@{internet.OUTSIDE_DOMAIN}"],
                       message("bob@example.org", f"friend@{internet.OUTSIDE_DOMAIN}", _token()).as_bytes())
            from_spoof = None
        except smtplib.SMTPDataError as e:
            from_spoof = e
        finally:
            c.close()
    _expect(from_spoof is not None and from_spoof.smtp_code == 550,
            f"header From: bob@ accepted for alice's login ({from_spoof!r})")
    limited = _over_the_sending_limit(s)
    spf_results = set()
    for tok in toks:
        wait_until(lambda: outside_messages(tok), 60, f"outside MTA to receive {tok}")
        raw = outside_messages(tok)[0]
        peer = re.search(rb"^X-Lab-Peer: (\S+)", raw, re.M).group(1).decode()
        result = spf_check(peer, "alice@example.org", s.fqdn("mx1"))
        _expect(result == "pass", f"{tok}: SPF for {peer} is {result}, not pass")
        spf_results.add(f"{peer} {result}")
        raw = b"\r\n".join(l for l in raw.split(b"\r\n") if not l.startswith(b"X-Lab-"))
        _expect(b"DKIM-Signature" in raw, f"{tok}: no DKIM-Signature header")
        _expect(dkim.verify(raw, dnsfunc=lab_dns_txt), f"{tok}: DKIM signature does not verify")
    return (f"587+465 delivered and DKIM-verified; SPF {', '.join(sorted(spf_results))}; "
            f"spoof refused ({getattr(spoof, 'smtp_code', '?')}), header From spoof refused (550); "
            f"{limited}")


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
                _expect(e.smtp_code == 451 and b"Sending limit reached" in e.smtp_error,
                        f"{user} over the limit: {e!r}")
                answers.append(451)
                break
            finally:
                c.close()
    _expect(answers[-1] == 451, f"{user} sent {len(answers)} messages to {n} recipients each, none refused")
    postmaster = f"postmaster@{s.primary_domain}"
    box = next((a.to[0] for a in s.all_aliases if a.address == postmaster), postmaster)
    wait_imap(box, f"Sending limit reached by {user}", timeout=90)
    return (f"{user} to {n} recipients: {' then '.join(map(str, answers))}, "
            f"the postmaster's note in {box}'s INBOX")


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


def s_backup_mx() -> str:
    """(4) mx1 down: mx2 queues for valid users, 550 for unknown; mx1 back: delivered once."""
    if "mx2" not in machines_roles():
        return "skipped: single topology"
    s = _s()
    # A user, a sub-address, an alias with three members and an alias that forwards
    # outside too: each copy must arrive exactly once.
    sent = {"alice@example.org": _token(), SUBADDRESS: _token(), TEAM: _token(), FORWARD: _token()}
    machines.stop("mx1")
    try:
        # The outside Postfix finds mx1 (MX 10) dark and hands the mail to mx2 (MX 20).
        mark = len(outside_mta.log_text())
        for to, tok in sent.items():
            via_outside(to, tok)
        wait_until(outside_mta.queue_empty, 90, "the outside Postfix to hand the mail to mx2")
        with inside():
            with LabSMTP(s.fqdn("mx2"), _host_ip("mx2"), 25) as c:
                c.starttls(context=tls_context())
                c.ehlo()
                for unknown in ("nobody-here@example.org", "nobody-here+alice@example.org"):
                    c.mail(f"x@{internet.OUTSIDE_DOMAIN}")
                    code, _ = c.rcpt(unknown)
                    c.rset()
                    _expect(code == 550, f"mx2 answered {code} for unknown {unknown} (want 550)")
        q = machines.sh("mx2", "smtpctl show queue").stdout
        for to in sent:
            _expect(to in q, f"mx2 queue does not hold the message to {to}")
        relays = {line.split("relay=", 1)[1].split("[", 1)[0]
                  for line in outside_mta.log_text()[mark:].splitlines() if "status=sent" in line}
        _expect(relays == {s.fqdn("mx2")}, f"the outside Postfix delivered to {relays}, not mx2 alone")
    finally:
        machines.start("mx1")
        t_start = time.monotonic()
    machines.wait_booted("mx1")
    wait_until(lambda: _port_open(_host_ip("mx1"), 25), 120, "mx1:25 after restart")
    # No manual flush: mx2's mailstack-smtpd-flush timer runs `smtpctl schedule all`
    # every 5 s, so the messages must arrive within about a minute by themselves.
    t0 = time.monotonic()
    for to, tok in sent.items():
        wait_delivered(to, tok, timeout=max(10.0, 90 - (time.monotonic() - t0)))
    dt = time.monotonic() - t0
    total = time.monotonic() - t_start
    # Judged once mx2 and mx1 hold nothing more: a copy still queued could arrive twice.
    for role in ("mx2", "mx1"):
        wait_until(lambda: machines.sh(role, "smtpctl show queue").stdout.strip() == "", 60,
                   f"{role}'s queue to empty")
    _expect(outside_mta.queue_empty(), f"the outside Postfix still holds mail:\n{outside_mta.queue()}")
    for to, tok in sent.items():
        ours, outside = copies(to)
        for who in ours:
            n = imap_count(who, tok)
            _expect(n == 1, f"{tok} arrived {n} times for {who}")
        at_outside = outside_messages(tok)
        bounces = [m for m in at_outside if b"MAILER-DAEMON" in m
                   or b"Delivery Status Notification" in m]
        _expect(not bounces, f"a bounce came back for the message to {to}")
        _expect(len(at_outside) == len(outside),
                f"the outside MTA got {len(at_outside)} copies of {tok} (want {len(outside)})")
    return (f"4 messages (user, sub-address, 3-member alias, forwarding alias) sent by the outside "
            f"Postfix to mx2 (MX 20) while mx1 was off, "
            f"unknown user 550; all delivered {total:.0f}s after mx1 was started ({dt:.0f}s after "
            f"it accepted mail again), each copy exactly once, no bounce, queues empty")


def s_replication() -> str:
    """(5) a user added through mail-sync logs in on imap and receives mail."""
    s = _s()
    new = "dave@example.org"
    users = [u.model_dump(by_alias=True, exclude_none=True) for u in s.users] + [{"address": new}]
    s2 = config.running_settings(users=users)
    data = config.load_or_make_secrets(s2)
    ctx2 = config.context(s2, data)
    steps.run_plan(ctx2, only={"mail-sync"})
    wait_until(lambda: imap_count(new, "nothing") == 0, 60, f"{new} to log in on imap")
    tok = _token()
    inbound(new, tok)
    wait_imap(new, tok)
    # And back: the stack's own settings again remove the user everywhere (later
    # scenarios, such as redeploy, then start from the stack as configured).
    steps.run_plan(config.context(_s(), data), only={"mail-sync"})
    wait_until(lambda: not _imap_login_ok(new), 60, f"{new} to be refused on imap")
    return f"{new} synced, replicated, logged in and received mail; removed again, refused"


def s_sieve() -> str:
    """(extra) a user's Sieve redirect leaves imap through mx1 and reaches the outside."""
    user, home = "bob@example.org", "/var/vmail/example.org/bob"
    target = f"friend@{internet.OUTSIDE_DOMAIN}"
    script = f'require ["copy"];\nredirect :copy "{target}";\n'
    machines.sh(_imap_role(), (
        f"install -d -o vmail -g vmail -m 0700 {home}/sieve && "
        f"printf '%s' '{script}' > {home}/sieve/lab.sieve && "
        f"chown vmail:vmail {home}/sieve/lab.sieve && "
        f"ln -sfn sieve/lab.sieve {home}/.dovecot.sieve && chown -h vmail:vmail {home}/.dovecot.sieve"))
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


def _service_state(role: str) -> str:
    """Start times of the host's mail services and a checksum of their config files."""
    cmd = ("for u in opensmtpd rspamd redis-server dovecot nginx unbound postgresql@15-main; do "
           "systemctl show -p Id,ActiveEnterTimestamp,MainPID $u 2>/dev/null | tr '\\n' ' '; echo; done; "
           "find /etc/smtpd /etc/smtpd.conf /etc/rspamd/local.d /etc/dovecot /etc/nginx /etc/unbound "
           "/etc/postgresql /etc/mailstack /var/lib/rspamd/dkim -type f -exec sha256sum {} + 2>/dev/null "
           "| sort; stat -c '%n %a %U %G' /etc/smtpd/pgsql.conf /etc/dovecot/dovecot-sql.conf.ext 2>/dev/null")
    return machines.sh(role, cmd).stdout


def s_redeploy() -> str:
    """(extra) running every deploy step again with no change restarts and rewrites nothing."""
    roles = machines_roles()
    before = {r: _service_state(r) for r in roles}
    from ..stand import redeploy

    times = redeploy()
    after = {r: _service_state(r) for r in roles}
    for r in roles:
        if before[r] != after[r]:
            diff = [l for l in after[r].splitlines() if l not in before[r].splitlines()]
            raise AssertionError(f"{r} changed on a no-op redeploy: {diff[:4]}")
    return f"{len(times)} steps rerun in {sum(times.values()):.0f}s; no restart, no file changed"


def s_reboot() -> str:
    """(8) every host reboots and mail flows again."""
    for role in machines_roles():
        old = machines.leader(role)
        machines.sh(role, "systemctl reboot")
        wait_until(lambda: machines.leader(role) != old, 120, f"{role} to restart")
        machines.wait_booted(role, 180)
    wait_until(lambda: _port_open(_host_ip("mx1"), 25), 120, "mx1:25 after reboot")
    tok = _token()
    wait_until(lambda: (inbound("alice@example.org", tok) or True), 120, "mx1 to accept mail")
    wait_imap("alice@example.org", tok, timeout=120)
    return "all hosts rebooted; inbound delivery and IMAPS work"


