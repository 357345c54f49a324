"""The checks pydantic's types can't express, one function per settings section; each
returns its problems, every one naming the key, the value and the fix. `check` runs
them all, in the order the sections are listed in (so are the problems)."""
from __future__ import annotations

import ipaddress
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from .backup import BACKUP_TARGET_FIX, S3_FIX, _CALENDAR_RE, _KNOWN_HOST_RE, s3_target, sftp_target
from .base import (
    _BCRYPT_RE, _DOMAIN_RE, _HOSTLABEL_RE, _LOCALPART_RE, _SHA512_CRYPT_RE, HASH_FIX, MIN_RSA_BITS,
    NAMESPACE, _fmt,
)
from .mail import LETSENCRYPT
from .model import Settings
from .servers import SUPPORTED_IMAGES

ns = NAMESPACE


def check(s: Settings, secret_keys: set[str]) -> list[str]:
    return [
        *_check_domains(s),
        *_check_hostnames(s),
        *_check_users(s, secret_keys),
        *_check_aliases(s),
        *_check_hetzner(s),
        *_check_admin(s),
        *_check_updates(s),
        *_check_acme(s),
        *_check_dmarc(s),
        *_check_dns(s),
        *_check_resolver(s),
        *_check_dkim(s),
        *_check_backup(s, secret_keys),
        *_check_quota(s),
        *_check_roles(s),
    ]


def _address(p: list[str], key: str, addr: str, domains: tuple[str, ...] | None) -> bool:
    """Whether addr is a valid address (in one of domains, unless None); if not, the
    problem is added to p."""
    local, at, dom = addr.rpartition("@")
    if not at or not local or not _LOCALPART_RE.match(local) or not _DOMAIN_RE.match(dom):
        p.append(f"{key}: {addr!r} is not a valid e-mail address; use 'name@domain'")
        return False
    if domains is not None and dom not in domains:
        p.append(
            f"{key}: {addr!r} is outside every mail domain ({', '.join(domains)}); "
            f"add {dom!r} to {ns}:domains or fix the address"
        )
        return False
    return True


def _first_index(addresses) -> dict[str, int]:
    """Each address and the index of its first entry."""
    first: dict[str, int] = {}
    for i, a in enumerate(addresses):
        first.setdefault(a, i)
    return first


def _check_domains(s: Settings) -> list[str]:
    p: list[str] = []
    if not s.domains:
        p.append(f"{ns}:domains: is empty; list at least one mail domain, e.g. [example.org]")
    seen: set[str] = set()
    for i, d in enumerate(s.domains):
        if not _DOMAIN_RE.match(d):
            p.append(f"{ns}:domains[{i}]: {d!r} is not a valid domain name; use a name like 'example.org'")
        if d in seen:
            p.append(f"{ns}:domains[{i}]: {d!r} is listed twice; remove the duplicate")
        seen.add(d)
    return p


def _check_hostnames(s: Settings) -> list[str]:
    p: list[str] = []
    if s.hostnames.domain is not None and not _DOMAIN_RE.match(s.hostnames.domain):
        p.append(f"{ns}:hostnames.domain: {s.hostnames.domain!r} is not a valid domain name; use e.g. 'example.org'")
    labels: dict[str, str] = {}
    for label in ("mx1", "mx2", "imap", "smtp"):
        v = getattr(s.hostnames, label)
        if not _HOSTLABEL_RE.match(v):
            p.append(f"{ns}:hostnames.{label}: {v!r} is not a single DNS label; use letters, digits and '-', e.g. '{label}'")
        if v in labels and not (label == "smtp" and labels[v] == "mx1"):
            p.append(f"{ns}:hostnames.{label}: {v!r} is already the name of {labels[v]}; choose a distinct name")
        labels.setdefault(v, label)
    return p


def _check_users(s: Settings, secret_keys: set[str]) -> list[str]:
    p: list[str] = []
    users: dict[str, int] = {}
    for i, u in enumerate(s.users):
        key = f"{ns}:users[{i}]"
        _address(p, f"{key}.address", u.address, s.domains)
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
    return p


def _check_aliases(s: Settings) -> list[str]:
    p: list[str] = []
    users = _first_index(u.address for u in s.users)
    aliases: dict[str, int] = {}
    for i, a in enumerate(s.aliases):
        key = f"{ns}:aliases[{i}]"
        _address(p, f"{key}.address", a.address, s.domains)
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
            elif _address(p, f"{key}.to[{j}]", dest, None) and dest.rsplit("@", 1)[1] in s.domains:
                if dest not in users and dest not in {x.address for x in s.aliases}:
                    p.append(
                        f"{key}.to[{j}]: {dest!r} is in a local domain but is neither a user nor an alias; "
                        "add the user or fix the address (mail to it would bounce)"
                    )
    return p + _alias_loops(s)


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
                        f"{ns}:aliases[{index[cycle[0]]}]: alias loop {' -> '.join(cycle)}; "
                        "point one of these aliases at a mailbox instead"
                    )
            elif nxt in graph:
                walk(nxt, path + [nxt])

    for start in graph:
        walk(start, [start])
    return problems


def _check_hetzner(s: Settings) -> list[str]:
    p: list[str] = []
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
    return p


def _check_admin(s: Settings) -> list[str]:
    p = _ssh_key_problems(s.admin.ssh_keys)
    for i, cidr in enumerate(s.admin.ssh_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            p.append(f"{ns}:admin.sshCidrs[{i}]: {cidr!r} is not a valid CIDR ({exc}); use e.g. '203.0.113.7/32' or '2001:db8::/48'")
    if not s.admin.ssh_cidrs:
        p.append(f"{ns}:admin.sshCidrs: is empty; list the networks allowed to reach SSH (the deploy steps need it), e.g. ['203.0.113.7/32']")
    return p


def _ssh_key_problems(keys: tuple[str, ...]) -> list[str]:
    """Each admin key parsed by a real OpenSSH public key parser; Hetzner refuses a key
    it can't parse, and a project can hold a key only once."""
    p: list[str] = []
    fix = "paste the whole line from ~/.ssh/id_ed25519.pub (create one with `ssh-keygen -t ed25519`)"
    seen: dict[str, int] = {}
    for i, line in enumerate(keys):
        key = f"{ns}:admin.sshKeys[{i}]"
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
            p.append(f"{key}: is the same key as {ns}:admin.sshKeys[{seen[blob]}] "
                     "(Hetzner holds a key once per project); remove one of them")
        seen.setdefault(blob, i)
    return p


def _check_updates(s: Settings) -> list[str]:
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", s.updates.reboot_time):
        return [f"{ns}:updates.rebootTime: {s.updates.reboot_time!r} is not a time of day HH:MM "
                "(24-hour, server time UTC); use e.g. '04:30'"]
    return []


def _check_acme(s: Settings) -> list[str]:
    p: list[str] = []
    _address(p, f"{ns}:acme.email", s.acme.email, None)
    if not re.match(r"^https://[^\s/]+(/\S*)?$", s.acme.directory):
        p.append(f"{ns}:acme.directory: {s.acme.directory!r} is not an https URL; use {LETSENCRYPT!r}")
    elif s.acme.directory != LETSENCRYPT and "letsencrypt.org" not in s.acme.directory and not s.acme.caa_issuer:
        p.append(f"{ns}:acme.caaIssuer: is required with a non-Let's-Encrypt directory {s.acme.directory!r}; set the CA's CAA domain")
    return p


def _check_dmarc(s: Settings) -> list[str]:
    p: list[str] = []
    if s.dmarc.rua is not None:
        _address(p, f"{ns}:dmarc.rua", s.dmarc.rua, None)
    return p


def _check_dns(s: Settings) -> list[str]:
    p: list[str] = []
    if s.dns.tls_rpt is not None:
        _address(p, f"{ns}:dns.tlsRpt", s.dns.tls_rpt, None)
    return p


def _check_resolver(s: Settings) -> list[str]:
    p: list[str] = []
    for i, ip in enumerate(s.resolver.forward_to):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            p.append(f"{ns}:resolver.forwardTo[{i}]: {ip!r} is not an IP address; use e.g. '192.0.2.53' or leave the list empty")
    return p


def _check_dkim(s: Settings) -> list[str]:
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,62}$", s.dkim.selector):
        return [f"{ns}:dkim.selector: {s.dkim.selector!r} is not a DNS label; use e.g. 'mail'"]
    return []


def _check_backup(s: Settings, secret_keys: set[str]) -> list[str]:
    p: list[str] = []
    b, key = s.backup, f"{ns}:backup"
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


def _check_quota(s: Settings) -> list[str]:
    """A quota beyond the whole mail volume can never be enforced; warnings must be
    distinct percentages below 100."""
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
