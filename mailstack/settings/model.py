"""The whole stack's settings (`Settings`): one field per section, and the names derived
from them that DNS, certificates and configs must agree on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .accounts import ROLE_LOCAL_PARTS, Alias, User
from .backup import STORAGE_BOX_DEFAULT_LOCATIONS, Backup
from .base import _lower, _Model
from .mail import Acme, Dkim, Dmarc, Dns, Limits, MtaSts, Quota, Resolver, Spam, Status
from .servers import Admin, Hetzner, Hostnames, Updates


class Settings(_Model):
    topology: Literal["ha", "single"] = Field(
        default="ha", description="`ha` (mx1, imap, mx2) or `single` (everything on mx1)"
    )
    domains: tuple[str, ...] = Field(description="the mail domains; the first is the primary one")
    users: tuple[User, ...] = Field(
        default=(),
        description=(
            "the mailboxes; at least one active user is needed: the role addresses (`admin.mailbox`) must reach a mailbox"
        ),
    )
    aliases: tuple[Alias, ...] = Field(
        default=(), description="addresses that forward to users, other aliases or outside"
    )
    hostnames: Hostnames = Field(default=Hostnames(), description="the hosts' names")
    hetzner: Hetzner = Field(default=Hetzner(), description="where and what to run")
    admin: Admin = Field(
        default=Admin(), description="who administers the servers, and who receives the role addresses"
    )
    acme: Acme = Field(description="the certificates' ACME account and CA")
    dmarc: Dmarc = Field(default=Dmarc(), description="the DMARC record")
    mta_sts: MtaSts = Field(default=MtaSts(), description="the MTA-STS policy")
    dns: Dns = Field(default=Dns(), description="the DNS zones and records")
    dkim: Dkim = Field(default=Dkim(), description="DKIM signing")
    quota: Quota = Field(default=Quota(), description="mailbox sizes and quota warnings")
    resolver: Resolver = Field(default=Resolver(), description="unbound, the hosts' resolver")
    spam: Spam = Field(default=Spam(), description="Rspamd")
    limits: Limits = Field(default=Limits(), description="abuse limits (docs/hardening.md)")
    status: Status = Field(default=Status(), description="`make status` and its daily job")
    updates: Updates = Field(
        default=Updates(), description="unattended upgrades (Debian, security, backports) every day"
    )
    backup: Backup = Field(default=Backup(), description='backups with restic (see "Backups and restore")')

    _norm_domains = field_validator("domains", mode="before")(
        lambda v: [_lower(x) for x in v] if isinstance(v, (list, tuple)) else v
    )

    # Derived names used everywhere; one definition so DNS, certs and configs agree.
    @property
    def host_domain(self) -> str:
        return self.hostnames.domain or self.domains[0]

    def fqdn(self, label: str) -> str:
        return f"{getattr(self.hostnames, label)}.{self.host_domain}"

    @property
    def primary_domain(self) -> str:
        return self.domains[0]

    @property
    def dmarc_rua(self) -> str:
        return self.dmarc.rua or f"dmarc-reports@{self.primary_domain}"

    @property
    def tls_rpt_rua(self) -> str:
        return self.dns.tls_rpt or f"tls-reports@{self.primary_domain}"

    def quota_mb(self, user: User) -> int:
        """The user's mailbox size in MiB (0: unlimited)."""
        return self.quota.default_mb if user.quota_mb is None else user.quota_mb

    @property
    def role_addresses(self) -> tuple[str, ...]:
        """Addresses that must reach a mailbox (RFC 2142, and the report addresses the
        DNS records publish when they are in our domains)."""
        roles = [f"{kind}@{d}" for d in self.domains for kind in ROLE_LOCAL_PARTS]
        roles += [a for a in (self.dmarc_rua, self.tls_rpt_rua) if a.rpartition("@")[2] in self.domains]
        return tuple(dict.fromkeys(roles))

    @property
    def admin_mailbox(self) -> str | None:
        if self.admin.mailbox:
            return self.admin.mailbox
        return next((u.address for u in self.users if u.active), None)

    @property
    def role_aliases(self) -> tuple[Alias, ...]:
        """Role addresses that no user or alias of the settings covers, as aliases of
        the admin mailbox (the decision is in docs/mail-flow.md, "Role addresses")."""
        taken = {u.address for u in self.users} | {a.address for a in self.aliases}
        box = self.admin_mailbox
        if box is None:
            return ()
        return tuple(Alias(address=r, to=(box,)) for r in self.role_addresses if r not in taken and r != box)

    @property
    def all_aliases(self) -> tuple[Alias, ...]:
        """The configured aliases plus the role aliases: what the database holds."""
        return self.aliases + self.role_aliases

    @property
    def storage_box_location(self) -> str:
        if self.backup.storage_box.location:
            return self.backup.storage_box.location
        loc = self.hetzner.location
        return loc if loc in STORAGE_BOX_DEFAULT_LOCATIONS else "fsn1"

    @property
    def caa_issuer(self) -> str:
        if self.acme.caa_issuer:
            return self.acme.caa_issuer
        return "letsencrypt.org"
