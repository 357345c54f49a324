"""Typed stack settings, parsed and validated from Pulumi stack config.

Everything downstream (rendering, resources, the lab) takes a `Settings`. Parsing is a
pure function of the raw config mapping, so it is tested without Pulumi; every error
names the config key path, the bad value and the fix, and all errors of one run are
reported together before a single resource is declared.
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Iterable, Literal, Mapping

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

NAMESPACE = "mailstack"
# RFC 2142: every mail domain must accept mail for these (and Hetzner's abuse desk and
# DNSBL operators write to abuse@).
ROLE_LOCAL_PARTS = ("postmaster", "abuse")

# What Hetzner offers (server types, locations, images) is not kept here: it changes
# (cx22-cx52 and cpx11-cpx51 were retired in January 2026), so the program asks the
# provider's data sources at preview time (`mailstack.catalogue`, `components/catalogue.py`).
# This is the one default; `hcloud server-type list` shows what else a location offers.
DEFAULT_SERVER_TYPE = "cx23"
SUPPORTED_IMAGES = frozenset({"debian-12"})
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}$)({_LABEL}\.)+[a-z]{{2,63}}$")
_HOSTLABEL_RE = re.compile(rf"^{_LABEL}$")
_LOCALPART_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_SHA512_CRYPT_RE = re.compile(r"^\$6\$(rounds=\d{4,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$")
_BCRYPT_RE = re.compile(r"^\$2[aby]\$\d{2}\$[./0-9A-Za-z]{53}$")
# sshd on Debian 12 (OpenSSH 9.2) no longer accepts DSA; RSA below 2048 bits is too weak.
MIN_RSA_BITS = 2048
HASH_FIX = (
    "run `make hash-password`, then store the printed hash with "
    "`pulumi config set --secret --path '{key}' '<hash>'`"
)


class SettingsError(ValueError):
    """Stack config is invalid. `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid stack config:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
    )


def _lower(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


class User(_Model):
    address: str
    # None means: the stack generates an initial password (a secret stack output).
    password_hash: str | None = None
    # None: quota.defaultMb. 0: unlimited.
    quota_mb: int | None = Field(default=None, ge=0)
    active: bool = True

    _norm = field_validator("address", mode="before")(_lower)

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]

    @property
    def local_part(self) -> str:
        return self.address.rsplit("@", 1)[0]


class Alias(_Model):
    address: str
    to: tuple[str, ...]
    active: bool = True

    _norm = field_validator("address", mode="before")(_lower)

    @field_validator("to", mode="before")
    @classmethod
    def _to_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            return [_lower(x) for x in v]
        return v

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]


class Hostnames(_Model):
    domain: str | None = None  # defaults to the first mail domain
    mx1: str = "mx1"
    mx2: str = "mx2"
    imap: str = "imap"
    smtp: str = "smtp"


class ServerTypes(_Model):
    mx1: str = DEFAULT_SERVER_TYPE
    imap: str = DEFAULT_SERVER_TYPE
    mx2: str = DEFAULT_SERVER_TYPE


class Hetzner(_Model):
    location: str = "fsn1"
    image: str = "debian-12"
    server_types: ServerTypes = ServerTypes()
    private_cidr: str = "10.77.0.0/16"
    mail_volume_gb: int = Field(default=20, ge=10, le=10240)


class Admin(_Model):
    ssh_keys: tuple[str, ...] = ()
    ssh_cidrs: tuple[str, ...] = ()
    # The mailbox that receives the role addresses (postmaster@ and abuse@ of every
    # domain, the DMARC and TLS-RPT reports) the aliases don't route. None: the first
    # active user.
    mailbox: str | None = None

    _norm = field_validator("mailbox", mode="before")(_lower)


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
    # Learns of each class (spam and ham, from users moving mail into and out of Junk)
    # before the Bayes classifier votes at all (Rspamd's min_learns). Rspamd's own 200
    # takes a household months; at 50 each the token statistics are already usable, and
    # BAYES_SPAM alone (at most 5.1) stays below add_header (6), so an early mistake can't
    # file mail into Junk by itself. The lab sets it low to prove learning in seconds.
    bayes_min_learns: int = Field(default=50, ge=1, le=100000)


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

class Updates(_Model):
    # Unattended upgrades install security and backports updates every day; when one needs
    # a reboot (a new kernel), the host reboots at this time of day (server time, UTC).
    reboot: bool = True
    reboot_time: str = "04:30"


# Storage Boxes exist in Germany and Finland only.
# Only to pick a default: where Hetzner offered Storage Boxes when this was written (the
# provider's data sources don't say per location). A location named in the settings is
# looked up at preview (mailstack/catalogue.py), and so is the type.
STORAGE_BOX_DEFAULT_LOCATIONS = frozenset({"fsn1", "nbg1", "hel1"})
BACKUP_TARGET_FIX = (
    "use 'storagebox' (a Hetzner Storage Box the stack creates), "
    "'sftp://user@host[:port]/path' (any SFTP server), "
    "'s3:https://endpoint/bucket[/path]' (any S3 service) or 'none' (no backups)"
)
S3_FIX = ("`pulumi config set --secret --path 'mailstack:backup.s3.accessKeyId' <id>` and "
          "`pulumi config set --secret --path 'mailstack:backup.s3.secretAccessKey' <key>`")


class StorageBoxSettings(_Model):
    type: str = "bx11"
    location: str | None = None  # default: hetzner.location


class Keep(_Model):
    daily: int = Field(default=7, ge=0, le=3650)
    weekly: int = Field(default=5, ge=0, le=520)
    monthly: int = Field(default=12, ge=0, le=1200)


class S3Credentials(_Model):
    # For an `s3:` target; secrets (`pulumi config set --secret --path ...`). They reach
    # the data hosts only in a 0600 file of the backup step.
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = ""


class Backup(_Model):
    # Where the restic repositories live (one per data host, under this target).
    target: str = "storagebox"
    s3: S3Credentials = S3Credentials()
    storage_box: StorageBoxSettings = StorageBoxSettings()
    # systemd OnCalendar expression (checked again by systemd-analyze on the server).
    schedule: str = "*-*-* 03:17:00"
    keep: Keep = Keep()
    check_every_days: int = Field(default=7, ge=1, le=365)
    # A fresh host with an empty mail store (or an empty mail database) restores the
    # latest snapshot in its deploy step, before it accepts mail.
    restore_on_empty: bool = True
    # known_hosts lines for the target; empty: the key first seen is trusted and kept.
    known_hosts: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.target != "none"


class Settings(_Model):
    topology: Literal["ha", "single"] = "ha"
    domains: tuple[str, ...]
    users: tuple[User, ...] = ()
    aliases: tuple[Alias, ...] = ()
    hostnames: Hostnames = Hostnames()
    hetzner: Hetzner = Hetzner()
    admin: Admin = Admin()
    acme: Acme
    dmarc: Dmarc = Dmarc()
    mta_sts: MtaSts = MtaSts()
    dns: Dns = Dns()
    dkim: Dkim = Dkim()
    quota: Quota = Quota()
    resolver: Resolver = Resolver()
    spam: Spam = Spam()
    limits: Limits = Limits()
    status: Status = Status()
    updates: Updates = Updates()

    backup: Backup = Backup()

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
        roles += [a for a in (self.dmarc_rua, self.tls_rpt_rua)
                  if a.rpartition("@")[2] in self.domains]
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
        return tuple(Alias(address=r, to=(box,)) for r in self.role_addresses
                     if r not in taken and r != box)

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


# --------------------------------------------------------------------------- loading

_KEYS = {name: field.alias or name for name, field in Settings.model_fields.items()}


def _config_key(loc: tuple[Any, ...]) -> str:
    key = f"{NAMESPACE}:"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += ("" if i == 0 else ".") + str(part)
    return key


def _fmt(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _raw_config(config: Mapping[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, value in config.items():
        ns, _, name = key.partition(":")
        if ns != NAMESPACE:
            continue
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
                if isinstance(parsed, (dict, list, bool, int)) and not isinstance(value, bool):
                    value = parsed
            except ValueError:
                pass
        raw[name] = value
    return raw


def load_settings(config: Mapping[str, Any], secret_keys: Iterable[str] = ()) -> Settings:
    """Parse `mailstack:*` stack config (values as Pulumi passes them: strings, JSON for
    objects) into Settings, or raise SettingsError listing every problem."""
    secret_keys = set(secret_keys)
    raw = _raw_config(config)
    unknown = sorted(set(raw) - set(_KEYS.values()))
    problems = [
        f"{NAMESPACE}:{k}: unknown key; valid keys are {', '.join(sorted(_KEYS.values()))}"
        for k in unknown
    ]
    for k in unknown:
        raw.pop(k)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            key = _config_key(err["loc"])
            if err["type"] == "missing":
                problems.append(f"{key}: is required but not set; set it in config/Pulumi.<stack>.yaml")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key (value {_fmt(err['input'])}); remove it or fix its spelling")
            else:
                problems.append(f"{key}: {_fmt(err['input'])} is invalid: {err['msg']}")
        raise SettingsError(problems) from None
    problems += _check(settings, raw, secret_keys)
    if problems:
        raise SettingsError(problems)
    return settings


def load_stack(config: Mapping[str, Any], secret_keys: Iterable[str],
               environ: Mapping[str, str]) -> Settings:
    """What the Pulumi program runs: load_settings plus the provider's own secret, so a
    missing or clear-text Hetzner token is reported with everything else, before any
    resource exists."""
    secret_keys = set(secret_keys)
    problems = provider_problems(config, secret_keys, environ)
    try:
        settings = load_settings(config, secret_keys)
    except SettingsError as exc:
        raise SettingsError(exc.problems + problems) from None
    if problems:
        raise SettingsError(problems)
    return settings


def provider_problems(config: Mapping[str, Any], secret_keys: set[str],
                      environ: Mapping[str, str]) -> list[str]:
    token = config.get("hcloud:token")
    if token is None and not environ.get("HCLOUD_TOKEN"):
        return ["hcloud:token: is not set; create an API token (read/write) in the Hetzner "
                "Cloud console and run `pulumi config set --secret hcloud:token <token>` "
                "(or export HCLOUD_TOKEN)"]
    if token is not None and "hcloud:token" not in secret_keys:
        return ["hcloud:token: is stored in clear text in the stack file; remove it and run "
                "`pulumi config set --secret hcloud:token <token>`"]
    if token is not None and not re.fullmatch(r"[A-Za-z0-9]{64}", str(token)):
        return ["hcloud:token: <hidden> is not a Hetzner Cloud API token (64 letters and "
                "digits); copy it again from the Hetzner Cloud console"]
    return []


def _check(s: Settings, raw: dict[str, Any], secret_keys: set[str]) -> list[str]:
    p: list[str] = []
    ns = NAMESPACE

    if not s.domains:
        p.append(f"{ns}:domains: is empty; list at least one mail domain, e.g. [example.org]")
    seen: set[str] = set()
    for i, d in enumerate(s.domains):
        if not _DOMAIN_RE.match(d):
            p.append(f"{ns}:domains[{i}]: {d!r} is not a valid domain name; use a name like 'example.org'")
        if d in seen:
            p.append(f"{ns}:domains[{i}]: {d!r} is listed twice; remove the duplicate")
        seen.add(d)
    domains = set(s.domains)

    if s.hostnames.domain is not None and not _DOMAIN_RE.match(s.hostnames.domain):
        p.append(f"{ns}:hostnames.domain: {s.hostnames.domain!r} is not a valid domain name; use e.g. 'example.org'")
    labels = {}
    for label in ("mx1", "mx2", "imap", "smtp"):
        v = getattr(s.hostnames, label)
        if not _HOSTLABEL_RE.match(v):
            p.append(f"{ns}:hostnames.{label}: {v!r} is not a single DNS label; use letters, digits and '-', e.g. '{label}'")
        if v in labels and not (label == "smtp" and labels[v] == "mx1"):
            p.append(f"{ns}:hostnames.{label}: {v!r} is already the name of {labels[v]}; choose a distinct name")
        labels.setdefault(v, label)

    def check_address(key: str, addr: str, must_be_ours: bool) -> bool:
        local, at, dom = addr.rpartition("@")
        if not at or not local or not _LOCALPART_RE.match(local) or not _DOMAIN_RE.match(dom):
            p.append(f"{key}: {addr!r} is not a valid e-mail address; use 'name@domain'")
            return False
        if must_be_ours and dom not in domains:
            p.append(
                f"{key}: {addr!r} is outside every mail domain ({', '.join(s.domains)}); "
                f"add {dom!r} to {ns}:domains or fix the address"
            )
            return False
        return True

    users: dict[str, int] = {}
    for i, u in enumerate(s.users):
        key = f"{ns}:users[{i}]"
        check_address(f"{key}.address", u.address, True)
        if u.address in users:
            p.append(f"{key}.address: {u.address!r} duplicates {ns}:users[{users[u.address]}]; remove one of them")
        users.setdefault(u.address, i)
        if u.password_hash is not None:
            hkey = f"{key}.passwordHash"
            if not (_SHA512_CRYPT_RE.match(u.password_hash) or _BCRYPT_RE.match(u.password_hash)):
                shown = "<hidden>" if len(u.password_hash) < 40 else _fmt(u.password_hash[:12] + "...")
                p.append(
                    f"{hkey}: {shown} is not a SHA512-CRYPT ($6$) or BLF-CRYPT ($2b$) hash "
                    f"(a clear-text password is never accepted); " + HASH_FIX.format(key=f"{key}.passwordHash")
                )
            elif f"{ns}:users" not in secret_keys:
                p.append(
                    f"{hkey}: is stored in clear text in the stack file; password hashes are secrets: "
                    + HASH_FIX.format(key=f"{key}.passwordHash")
                )

    aliases: dict[str, int] = {}
    for i, a in enumerate(s.aliases):
        key = f"{ns}:aliases[{i}]"
        check_address(f"{key}.address", a.address, True)
        if a.address in aliases:
            p.append(f"{key}.address: {a.address!r} duplicates {ns}:aliases[{aliases[a.address]}]; merge their 'to' lists")
        if a.address in users:
            p.append(
                f"{key}.address: {a.address!r} is also a user ({ns}:users[{users[a.address]}]); "
                "an address is either a mailbox or an alias, remove one"
            )
        aliases.setdefault(a.address, i)
        if not a.to:
            p.append(f"{key}.to: is empty; list at least one destination address")
        for j, dest in enumerate(a.to):
            if dest == a.address:
                p.append(f"{key}.to[{j}]: {dest!r} points at the alias itself; remove it")
            elif check_address(f"{key}.to[{j}]", dest, False) and dest.rsplit("@", 1)[1] in domains:
                if dest not in users and dest not in {x.address for x in s.aliases}:
                    p.append(
                        f"{key}.to[{j}]: {dest!r} is in a local domain but is neither a user nor an alias; "
                        "add the user or fix the address (mail to it would bounce)"
                    )
    p += _alias_loops(s)

    h = s.hetzner
    # Location and server types are checked against the live catalogue at preview time.
    if h.image not in SUPPORTED_IMAGES:
        p.append(f"{ns}:hetzner.image: {h.image!r} is not supported; use 'debian-12' (the configs target Dovecot 2.3 and PostgreSQL 15)")
    try:
        net = ipaddress.ip_network(h.private_cidr)
        if net.version != 4 or not net.is_private or net.prefixlen > 24:
            raise ValueError
    except ValueError:
        p.append(f"{ns}:hetzner.privateCidr: {h.private_cidr!r} is not a private IPv4 network of /24 or larger; use e.g. '10.77.0.0/16'")

    p += _ssh_key_problems(s.admin.ssh_keys)
    for i, cidr in enumerate(s.admin.ssh_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            p.append(f"{ns}:admin.sshCidrs[{i}]: {cidr!r} is not a valid CIDR ({exc}); use e.g. '203.0.113.7/32' or '2001:db8::/48'")
    if not s.admin.ssh_cidrs:
        p.append(f"{ns}:admin.sshCidrs: is empty; list the networks allowed to reach SSH (the deploy steps need it), e.g. ['203.0.113.7/32']")

    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", s.updates.reboot_time):
        p.append(f"{ns}:updates.rebootTime: {s.updates.reboot_time!r} is not a time of day HH:MM "
                 "(24-hour, server time UTC); use e.g. '04:30'")
    check_address(f"{ns}:acme.email", s.acme.email, False)
    if not re.match(r"^https://[^\s/]+(/\S*)?$", s.acme.directory):
        p.append(f"{ns}:acme.directory: {s.acme.directory!r} is not an https URL; use {LETSENCRYPT!r}")
    elif s.acme.directory != LETSENCRYPT and "letsencrypt.org" not in s.acme.directory and not s.acme.caa_issuer:
        p.append(f"{ns}:acme.caaIssuer: is required with a non-Let's-Encrypt directory {s.acme.directory!r}; set the CA's CAA domain")
    if s.dmarc.rua is not None:
        check_address(f"{ns}:dmarc.rua", s.dmarc.rua, False)
    if s.dns.tls_rpt is not None:
        check_address(f"{ns}:dns.tlsRpt", s.dns.tls_rpt, False)
    for i, ip in enumerate(s.resolver.forward_to):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            p.append(f"{ns}:resolver.forwardTo[{i}]: {ip!r} is not an IP address; use e.g. '192.0.2.53' or leave the list empty")
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,62}$", s.dkim.selector):
        p.append(f"{ns}:dkim.selector: {s.dkim.selector!r} is not a DNS label; use e.g. 'mail'")
    p += _check_backup(s, secret_keys)
    p += _check_quota(s)
    p += _check_roles(s)
    return p


def _check_quota(s: Settings) -> list[str]:
    """A quota beyond the whole mail volume can never be enforced; warnings must be
    distinct percentages below 100."""
    ns = NAMESPACE
    p: list[str] = []
    volume_mb = s.hetzner.mail_volume_gb * 1024
    fix = f"lower it (0 is unlimited), or raise {ns}:hetzner.mailVolumeGb"
    if s.quota.default_mb > volume_mb:
        p.append(f"{ns}:quota.defaultMb: {s.quota.default_mb} is more than the whole mail volume "
                 f"({s.hetzner.mail_volume_gb} GB = {volume_mb} MB); {fix}")
    for i, u in enumerate(s.users):
        if u.quota_mb is not None and u.quota_mb > volume_mb:
            p.append(f"{ns}:users[{i}].quotaMb: {u.quota_mb} is more than the whole mail volume "
                     f"({s.hetzner.mail_volume_gb} GB = {volume_mb} MB); {fix}")
    w = s.quota.warn_at
    if any(not 0 < x < 100 for x in w) or len(set(w)) != len(w):
        p.append(f"{ns}:quota.warnAt: {_fmt(list(w))} must be distinct percentages between 1 and 99; "
                 "use e.g. [80, 95] (or [] for no warnings)")
    return p


def _check_roles(s: Settings) -> list[str]:
    """Every role address reaches an active mailbox: the missing ones become aliases of
    the admin mailbox, and configured ones must not lead nowhere."""
    ns = NAMESPACE
    p: list[str] = []
    users = {u.address: u for u in s.users}
    key = f"{ns}:admin.mailbox"
    if s.admin.mailbox is not None:
        box = s.admin.mailbox
        if box not in users:
            p.append(f"{key}: {s.admin.mailbox!r} is not one of {ns}:users; name an active "
                     "user, who receives postmaster@, abuse@ and the DMARC/TLS-RPT reports")
        elif not users[box].active:
            p.append(f"{key}: {s.admin.mailbox!r} is an inactive user (active: false); name an "
                     "active user, or activate it")
        if p:
            return p
    configured = {u.address for u in s.users} | {a.address for a in s.aliases}
    missing = [r for r in s.role_addresses if r not in configured]
    if missing and s.admin_mailbox is None:
        p.append(f"{key}: there is no active user to receive {', '.join(missing)}; add a user to "
                 f"{ns}:users (the first active one is the default admin mailbox) or route these "
                 f"addresses with {ns}:aliases")
    aliases = {a.address: a for a in s.aliases}
    index = {a.address: i for i, a in enumerate(s.aliases)}

    def reaches_mailbox(addr: str, seen: frozenset[str]) -> bool:
        if addr in users:
            return users[addr].active
        a = aliases.get(addr)
        if a is None or not a.active or addr in seen:
            return False
        return any(reaches_mailbox(d, seen | {addr}) for d in a.to)

    for r in s.role_addresses:
        if r in configured and not reaches_mailbox(r, frozenset()):
            where = (f"{ns}:aliases[{index[r]}]" if r in index
                     else f"{ns}:users[{[u.address for u in s.users].index(r)}]")
            p.append(f"{where}: {r!r} is a role address and must reach an active mailbox of this "
                     "stack (outside forwards break SPF, inactive entries refuse mail); add an "
                     f"active user to its 'to' list, or remove the entry and let {ns}:admin.mailbox "
                     "receive it")
    return p


_SFTP_TARGET_RE = re.compile(
    r"^sftp://(?P<user>[a-z0-9_][a-z0-9_.-]*)@(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])"
    r"(:(?P<port>\d{1,5}))?/(?P<path>[A-Za-z0-9_./-]*)$"
)
_S3_TARGET_RE = re.compile(
    r"^s3:(?P<scheme>https?://)?(?P<host>[A-Za-z0-9.-]+(:\d{1,5})?)/(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])"
    r"(?P<path>/[A-Za-z0-9_./-]*)?$"
)
_CALENDAR_RE = re.compile(r"^[A-Za-z0-9*,./:~ -]{1,100}$")
_KNOWN_HOST_RE = re.compile(
    r"^\S+ (ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}$")


def sftp_target(target: str) -> dict[str, str] | None:
    """user, host, port, path of an sftp:// backup target (None if it isn't one)."""
    m = _SFTP_TARGET_RE.match(target)
    if not m:
        return None
    return {"user": m["user"], "host": m["host"].strip("[]"), "port": m["port"] or "22",
            "path": m["path"].strip("/")}


def s3_target(target: str) -> dict[str, str] | None:
    """endpoint (with scheme), bucket, path of an s3: backup target (None if it isn't one)."""
    m = _S3_TARGET_RE.match(target)
    if not m:
        return None
    return {"endpoint": f"{m['scheme'] or 'https://'}{m['host']}", "bucket": m["bucket"],
            "path": (m["path"] or "").strip("/")}


def _check_backup(s: Settings, secret_keys: set[str]) -> list[str]:
    p: list[str] = []
    b, key = s.backup, f"{NAMESPACE}:backup"
    if b.target.startswith("s3:"):
        t3 = s3_target(b.target)
        if t3 is None:
            p.append(f"{key}.target: {_fmt(b.target)} is not an S3 target; use "
                     "'s3:https://endpoint/bucket[/path]', e.g. 's3:https://fsn1.your-objectstorage.com/my-bucket/mailstack'")
        elif ".." in t3["path"].split("/"):
            p.append(f"{key}.target: {_fmt(b.target)} climbs out of the bucket; name a path inside it")
        if not (b.s3.access_key_id and b.s3.secret_access_key):
            p.append(f"{key}.s3: an S3 target needs accessKeyId and secretAccessKey; set them with {S3_FIX}")
        elif key not in secret_keys:
            p.append(f"{key}.s3: the S3 credentials are stored in clear text in the stack file; "
                     f"they are secrets: set them with {S3_FIX}")
    elif b.s3.access_key_id or b.s3.secret_access_key:
        p.append(f"{key}.s3: S3 credentials are set but the target {_fmt(b.target)} is not an "
                 "s3: target; remove them (`pulumi config rm --path 'mailstack:backup.s3'`) or "
                 "name an s3: target")
    elif b.target not in ("storagebox", "none"):
        t = sftp_target(b.target)
        if t is None:
            p.append(f"{key}.target: {_fmt(b.target)} is not a backup target; {BACKUP_TARGET_FIX}")
        elif not t["path"] or ".." in t["path"].split("/"):
            p.append(f"{key}.target: {_fmt(b.target)} names no directory; add one, "
                     "e.g. 'sftp://backup@backup.example.net/mailstack'")
        elif not 0 < int(t["port"]) < 65536:
            p.append(f"{key}.target: port {t['port']} is out of range; use e.g. 22 (23 on a Storage Box)")
    if not _CALENDAR_RE.match(b.schedule):
        p.append(f"{key}.schedule: {_fmt(b.schedule)} is not a systemd calendar expression; "
                 "use e.g. 'daily' or '*-*-* 03:17:00' (see `man systemd.time`)")
    if b.keep.daily + b.keep.weekly + b.keep.monthly == 0:
        p.append(f"{key}.keep: keeps no snapshot at all; set e.g. {{daily: 7, weekly: 5, monthly: 12}}")
    for i, line in enumerate(b.known_hosts):
        if not _KNOWN_HOST_RE.match(line.strip()):
            p.append(f"{key}.knownHosts[{i}]: {_fmt(line)} is not a known_hosts line; "
                     "use the output of `ssh-keyscan -p PORT HOST`, e.g. '[host]:23 ssh-ed25519 AAAA...'")
    return p


def _ssh_key_problems(keys: tuple[str, ...]) -> list[str]:
    """Each admin key parsed by a real OpenSSH public key parser; Hetzner refuses a key
    it can't parse, and a project can hold a key only once."""
    p: list[str] = []
    fix = "paste the whole line from ~/.ssh/id_ed25519.pub (create one with `ssh-keygen -t ed25519`)"
    seen: dict[str, int] = {}
    for i, line in enumerate(keys):
        key = f"{NAMESPACE}:admin.sshKeys[{i}]"
        try:
            parsed = load_ssh_public_key(line.strip().encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            p.append(f"{key}: {_fmt(line)} is not an OpenSSH public key ({exc}); {fix}")
            continue
        if isinstance(parsed, dsa.DSAPublicKey):
            p.append(f"{key}: {_fmt(line)} is a DSA key, which sshd on Debian 12 refuses; {fix}")
        elif isinstance(parsed, rsa.RSAPublicKey) and parsed.key_size < MIN_RSA_BITS:
            p.append(f"{key}: {_fmt(line)} is a {parsed.key_size}-bit RSA key (at least {MIN_RSA_BITS} bits); {fix}")
        blob = line.split()[1]
        if blob in seen:
            p.append(f"{key}: is the same key as {NAMESPACE}:admin.sshKeys[{seen[blob]}] "
                     "(Hetzner holds a key once per project); remove one of them")
        seen.setdefault(blob, i)
    return p


def _alias_loops(s: Settings) -> list[str]:
    graph = {a.address: [d for d in a.to if d != a.address] for a in s.aliases}
    index = {a.address: i for i, a in enumerate(s.aliases)}
    reported: set[frozenset[str]] = set()
    problems = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    problems.append(
                        f"{NAMESPACE}:aliases[{index[cycle[0]]}]: alias loop {' -> '.join(cycle)}; "
                        "point one of these aliases at a mailbox instead"
                    )
            elif nxt in graph:
                walk(nxt, path + [nxt])

    for start in graph:
        walk(start, [start])
    return problems
