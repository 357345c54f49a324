"""Forwarding that passes SPF (issue 12): an alias that forwards to an outside address
sends the copy with an SRS envelope sender at our domain (OpenSMTPD's `srs`), the
outside MTA's own verifier gives it spf=pass, and bounces to the SRS address find their
way back to the original sender, outside or in our own mailboxes."""

from __future__ import annotations

import re

from .. import internet, outside_mta
from ..netns import inside
from ..util import wait_until
from .clients import (
    FORWARD,
    LabSMTP,
    _expect,
    _host_ip,
    _s,
    _token,
    copies,
    machines_roles,
    message,
    outside_copy,
    outside_messages,
    outside_verdict,
    tls_context,
    via_outside,
    wait_imap,
)
from .mailflow import _submission

# SRS0=<hash>=<day>=<original domain>=<original local part>@<the alias's domain>
SRS0 = re.compile(r"^SRS0=[A-Za-z0-9_-]{4}=[A-Z2-7]{2}=(?P<domain>[^=@]+)=(?P<user>[^@]+)@(?P<ours>.+)$")


# How the outside Postfix's pipe writes the null sender (`${sender}` of pipe(8)).
NULL_SENDER = "MAILER-DAEMON"


def _envelope_sender(raw: bytes) -> str:
    return re.search(rb"^X-Lab-Mail-From: ?(\S*)", raw, re.M).group(1).decode()


def _bounce(to: str, token: str) -> None:
    """A non-delivery report (null envelope sender), handed to the outside Postfix, which
    delivers it by MX look-up to whichever of our MX hosts answers, as a receiving site
    whose mailbox was full would send it back."""
    m = message(
        f"MAILER-DAEMON@{internet.OUTSIDE_DOMAIN}",
        to,
        token,
        f"The forwarded message {token} could not be delivered.\n",
    )
    m.replace_header("Subject", f"Undelivered Mail Returned to Sender {token}")
    outside_mta.submit(m, to, sender="")


def s_forwarding() -> str:
    """(issue 12) an alias forwarding outside: SRS sender, spf=pass at the outside verifier,
    bounces to the SRS address delivered back (outside sender and local sender)."""
    ours, outside = copies(FORWARD)
    _expect(bool(ours) and bool(outside), f"{FORWARD} must forward to a user and an outside address")
    domain = FORWARD.rsplit("@", 1)[1]

    # 1. An outside sender writes to the alias: the forwarded copy passes SPF.
    sender = f"sender@{internet.OUTSIDE_DOMAIN}"
    tok = _token()
    via_outside(FORWARD, tok)
    raw = outside_copy(tok)
    srs = _envelope_sender(raw)
    m = SRS0.match(srs)
    _expect(
        m is not None and (m["domain"], m["user"], m["ours"]) == (internet.OUTSIDE_DOMAIN, "sender", domain),
        f"{tok}: the forwarded copy's envelope sender is {srs!r}, not SRS0=...={internet.OUTSIDE_DOMAIN}=sender@{domain}",
    )
    verdict = outside_verdict(raw)
    _expect(verdict["spf"] == "pass", f"{tok}: the outside verifier says {verdict} for the forwarded copy")
    for who in ours:
        wait_imap(who, tok)

    # mx2 holds the same key: while mx1 is down, the bounce is taken there too (RCPT only).
    if "mx2" in machines_roles():
        with inside():
            with LabSMTP(_s().fqdn("mx2"), _host_ip("mx2"), 25) as c:
                c.starttls(context=tls_context())
                c.ehlo()
                c.mail("")
                code, reply = c.rcpt(srs)
        _expect(code == 250, f"mx2 answers {code} {reply!r} for a bounce to {srs}")

    # 2. The receiving site bounces it: the report reaches the outside sender again.
    btok = _token()
    _bounce(srs, btok)

    def back_outside():
        return [r for r in outside_messages(btok) if f"X-Lab-Rcpt-To: {sender}\r\n".encode() in r]

    wait_until(back_outside, 90, f"the bounce {btok} to {srs} to come back to {sender}")
    returned = back_outside()
    _expect(
        len(returned) == 1 and _envelope_sender(returned[0]) == NULL_SENDER,
        f"{btok}: {len(returned)} copies back at {sender}, or not with a null sender",
    )

    # 3. A local sender (alice, over submission) writes to the alias; the bounce to the
    # SRS address of her forwarded copy lands in her own mailbox.
    tok2 = _token()
    with inside():
        c = _submission(_s(), "alice@example.org")
        with c:
            c.send_message(message("alice@example.org", FORWARD, tok2))
    local_srs = _envelope_sender(outside_copy(tok2))
    m2 = SRS0.match(local_srs)
    _expect(
        m2 is not None and (m2["domain"], m2["user"]) == ("example.org", "alice"),
        f"{tok2}: alice's forwarded copy left with {local_srs!r}",
    )
    btok2 = _token()
    _bounce(local_srs, btok2)
    wait_imap("alice@example.org", btok2, timeout=90)
    return (
        f"forwarded copy sent as {srs} with spf={verdict['spf']} (dkim={verdict['dkim']}, "
        f"dmarc={verdict['dmarc']}); bounce to it delivered back to {sender} (mx2 takes it too); "
        f"alice's forwarded copy as {local_srs}, its bounce in her INBOX"
    )
