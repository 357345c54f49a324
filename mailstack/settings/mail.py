"""The mail service: certificates (ACME), DNS policy records (DMARC, MTA-STS, TLS-RPT),
DKIM, the resolver, spam filtering, quotas, abuse limits and the status check."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import _Model

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


class Acme(_Model):
    email: str
    directory: str = LETSENCRYPT
    # The CA's CAA identity; only Let's Encrypt's is known, anything else must be named.
    caa_issuer: str | None = None


class Dmarc(_Model):
    policy: Literal["none", "quarantine", "reject"] = "quarantine"
    rua: str | None = None  # default: dmarc-reports@<first domain>
    pct: int = Field(default=100, ge=0, le=100)


class MtaSts(_Model):
    mode: Literal["none", "testing", "enforce"] = "enforce"
    max_age: int = Field(default=604800, ge=86400, le=31557600)


class Dns(_Model):
    manage_zone: bool = True
    ttl: int = Field(default=3600, ge=60, le=86400)
    tls_rpt: str | None = None  # default: tls-reports@<first domain>


class Resolver(_Model):
    # Empty: unbound recurses itself (DNSBLs refuse shared resolvers). The lab forwards
    # to its own authoritative server.
    forward_to: tuple[str, ...] = ()


class Spam(_Model):
    # rspamd's GTUBE-like test strings for "add header" and "no action". Off in
    # production (anyone could use them to push mail past the filter); the lab turns it on
    # to prove that spam lands in Junk.
    test_patterns: bool = False


class Quota(_Model):
    # Every user's mailbox size unless the user sets quotaMb; 0 is unlimited.
    default_mb: int = Field(default=10240, ge=0)
    # Percentages at which Dovecot mails the user a warning, highest first when crossed.
    warn_at: tuple[int, ...] = (80, 95)


class Limits(_Model):
    """Abuse limits (docs/hardening.md). The defaults sit far above what a person does by
    hand, so only a stolen password or a runaway script ever meets them."""
    # Outbound, counted in recipients (one message to 50 people counts 50) over a sliding
    # hour, per authenticated login and per envelope sender address. Over it: 451.
    send_per_user_per_hour: int = Field(default=1000, ge=10, le=1000000)
    send_per_address_per_hour: int = Field(default=1000, ge=10, le=1000000)
    # Failed logins (SMTP AUTH on 465/587, IMAP on 993, ManageSieve on 4190) from one
    # address within loginWindow seconds before it is blocked for banSeconds.
    login_failures: int = Field(default=10, ge=3, le=1000)
    login_window: int = Field(default=600, ge=60, le=86400)
    ban_seconds: int = Field(default=3600, ge=60, le=2592000)


class Dkim(_Model):
    selector: str = "mail"


class Status(_Model):
    # `mailstack status` and its daily job: an outside MX that mx1 must reach on port 25
    # (Hetzner blocks outbound 25 on new projects). The lab points it at its outside MTA.
    outbound_probe: str = "gmail-smtp-in.l.google.com"
