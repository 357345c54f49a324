"""The mail service: certificates (ACME), DNS policy records (DMARC, MTA-STS, TLS-RPT),
DKIM, the resolver, spam filtering, quotas, abuse limits and the status check."""

from __future__ import annotations

import datetime
from typing import Literal

from pydantic import Field

from .base import _Model

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


class Acme(_Model):
    email: str = Field(description="the ACME account's contact address (expiry notices)")
    directory: str = Field(default=LETSENCRYPT, description="the ACME directory URL (https); default: Let's Encrypt")
    # The CA's CAA identity; only Let's Encrypt's is known, anything else must be named.
    caa_issuer: str | None = Field(
        default=None,
        description=("the CA's domain for the CAA records; required with a directory other than Let's Encrypt's"),
    )


class Dmarc(_Model):
    policy: Literal["none", "quarantine", "reject"] = Field(
        default="quarantine", description="the DMARC policy (`p=`): none, quarantine or reject"
    )
    rua: str | None = Field(
        default=None, description="where aggregate reports go (`rua=`); unset: dmarc-reports@ the first domain"
    )
    pct: int = Field(
        default=100, ge=0, le=100, description="the percentage of failing mail the policy applies to (`pct=`)"
    )


class MtaSts(_Model):
    mode: Literal["none", "testing", "enforce"] = Field(
        default="enforce", description="the MTA-STS policy mode: none, testing or enforce"
    )
    max_age: int = Field(
        default=604800, ge=86400, le=31557600, description="how long senders keep the policy, in seconds"
    )


class Dns(_Model):
    manage_zone: bool = Field(
        default=True,
        description=(
            "create the zones in Hetzner DNS; false: no zone, the output `zoneFile` holds the records for another DNS host"
        ),
    )
    ttl: int = Field(default=3600, ge=60, le=86400, description="the TTL of every record, in seconds")
    tls_rpt: str | None = Field(
        default=None, description="where TLS-RPT reports go; unset: tls-reports@ the first domain"
    )


class Resolver(_Model):
    # Empty: unbound recurses itself (DNSBLs refuse shared resolvers). The lab forwards
    # to its own authoritative server.
    forward_to: tuple[str, ...] = Field(
        default=(),
        description=(
            "IP addresses unbound forwards every query to; empty: unbound on each host recurses itself "
            "(DNSBLs refuse shared resolvers)"
        ),
    )


class Spam(_Model):
    # rspamd's GTUBE-like test strings for "add header" and "no action". Off in
    # production (anyone could use them to push mail past the filter); the lab turns it on
    # to prove that spam lands in Junk.
    test_patterns: bool = Field(
        default=False,
        description=(
            'make Rspamd honour its GTUBE-like test strings ("add header" etc.); for test setups such as the lab only'
        ),
    )
    # Rspamd's own 200 takes a household months; at 50 each the token statistics are
    # already usable, and BAYES_SPAM alone (at most 5.1) stays below add_header (6), so an
    # early mistake can't file mail into Junk by itself. The lab sets it low to prove
    # learning in seconds.
    bayes_min_learns: int = Field(
        default=50,
        ge=1,
        le=100000,
        description=(
            "messages users must have moved into Junk (spam) and out of it (ham), each, before Rspamd's "
            'Bayes classifier votes (see "Spam learning" in `docs/mail-flow.md`)'
        ),
    )


class Quota(_Model):
    default_mb: int = Field(
        default=10240,
        ge=0,
        description=(
            "every mailbox's size in MiB unless the user sets `quotaMb` (0 = unlimited); a full mailbox is "
            "refused at RCPT with `552 5.2.2` by mx1 and mx2"
        ),
    )
    # Highest first when crossed.
    warn_at: tuple[int, ...] = Field(
        default=(80, 95),
        description=("the percentages of the quota at which Dovecot mails the user a warning ([] for none)"),
    )


class Limits(_Model):
    """Abuse limits (docs/hardening.md). The defaults sit far above what a person does by
    hand, so only a stolen password or a runaway script ever meets them."""

    # Outbound, counted in recipients (one message to 50 people counts 50) over a sliding
    # hour, per authenticated login and per envelope sender address. Over it: 451.
    send_per_user_per_hour: int = Field(
        default=1000,
        ge=10,
        le=1000000,
        description=(
            "recipients an authenticated login may send to in an hour (over it: `451`, and the postmaster gets a note)"
        ),
    )
    send_per_address_per_hour: int = Field(
        default=1000,
        ge=10,
        le=1000000,
        description=("recipients one envelope sender address may send to in an hour, whoever logs in"),
    )
    # Failed logins (SMTP AUTH on 465/587, IMAP on 993, ManageSieve on 4190) from one
    # address within loginWindow seconds before it is blocked for banSeconds.
    login_failures: int = Field(
        default=10,
        ge=3,
        le=1000,
        description=(
            "failed logins (SMTP AUTH, IMAP, ManageSieve) from one address within `loginWindow` before it is blocked"
        ),
    )
    login_window: int = Field(default=600, ge=60, le=86400, description="the window for `loginFailures`, in seconds")
    ban_seconds: int = Field(
        default=3600, ge=60, le=2592000, description="how long a blocked address stays blocked, in seconds"
    )


class Dkim(_Model):
    """Signing keys and their rotation (mailstack/dkim.py has the schedule, docs/dkim.md
    the why). Without rotationDays there is one key per domain under `selector`."""

    selector: str = Field(
        default="mail",
        description=(
            "the DKIM selector; keys are generated per domain and kept secret in state. With "
            "rotation, generation g signs as `<selector>-g<g>`"
        ),
    )
    rotation_days: int = Field(
        default=0,
        ge=0,
        le=3650,
        description=(
            "0: the key never rotates; else a new key generation signs every rotationDays, "
            "counted from `start` (docs/dkim.md)"
        ),
    )
    start: datetime.date | None = Field(
        default=None,
        description=(
            "the date (YYYY-MM-DD, UTC midnight) the first new key generation signs; required with rotationDays"
        ),
    )
    # At least the record's TTL (dns.ttl is at most a day), so no resolver still holds
    # "no such record" when mail signed with the new key arrives.
    publish_days: int = Field(
        default=7, ge=1, le=365, description=("the next key's record is published this many days before it signs")
    )
    # For mail signed before the switch that still sits in a queue or waits for its check.
    grace_days: int = Field(
        default=7,
        ge=1,
        le=365,
        description=("the previous key's record stays published this many days after the switch"),
    )
    now: datetime.datetime | None = Field(
        default=None,
        description=(
            "the rotation schedule's clock; leave unset (`pulumi up` uses its own time); tests and the lab set it"
        ),
    )


class Status(_Model):
    # `mailstack status` and its daily job: an outside MX that mx1 must reach on port 25
    # (Hetzner blocks outbound 25 on new projects). The lab points it at its outside MTA.
    outbound_probe: str = Field(
        default="gmail-smtp-in.l.google.com",
        description=("an outside MX that mx1 must reach on port 25 (`make status` and its daily job)"),
    )
