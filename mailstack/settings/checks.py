"""The checks pydantic's types can't express, one function per settings section; each
returns its problems, every one naming the key, the value and the fix. `check` runs
them all, in the order the sections are listed in (so are the problems). Here the mail
data's and the mail service's; the servers' and the backups' in checks_servers.py."""

from __future__ import annotations

import ipaddress
import re

from .base import _BCRYPT_RE, _DOMAIN_RE, _LOCALPART_RE, _SHA512_CRYPT_RE, HASH_FIX, NAMESPACE, _fmt
from .checks_servers import _check_admin, _check_backup, _check_hetzner, _check_hostnames, _check_updates
from .mail import LETSENCRYPT
from .model import Settings

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
            p.append(
                f"{key}.address: {a.address!r} duplicates {ns}:aliases[{aliases[a.address]}]; merge their 'to' lists"
            )
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
                cycle = path[path.index(nxt) :] + [nxt]
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


def _check_acme(s: Settings) -> list[str]:
    p: list[str] = []
    _address(p, f"{ns}:acme.email", s.acme.email, None)
    if not re.match(r"^https://[^\s/]+(/\S*)?$", s.acme.directory):
        p.append(f"{ns}:acme.directory: {s.acme.directory!r} is not an https URL; use {LETSENCRYPT!r}")
    elif s.acme.directory != LETSENCRYPT and "letsencrypt.org" not in s.acme.directory and not s.acme.caa_issuer:
        p.append(
            f"{ns}:acme.caaIssuer: is required with a non-Let's-Encrypt directory {s.acme.directory!r}; set the CA's CAA domain"
        )
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
            p.append(
                f"{ns}:resolver.forwardTo[{i}]: {ip!r} is not an IP address; use e.g. '192.0.2.53' or leave the list empty"
            )
    return p


def _check_dkim(s: Settings) -> list[str]:
    """The rotation schedule must be able to keep its order: the next key's record out
    before it signs, the previous grace over before the next key appears."""
    d = s.dkim
    p: list[str] = []
    # Room for the generation suffix (`-g<n>`) in a 63-byte label.
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,50}$", d.selector):
        p.append(
            f"{ns}:dkim.selector: {d.selector!r} is not a DNS label of at most 51 "
            "characters (letters, digits, '-'); use e.g. 'mail'"
        )
    if not d.rotation_days:
        if d.start is not None:
            p.append(
                f"{ns}:dkim.start: {d.start.isoformat()!r} is set but dkim.rotationDays is 0 "
                f"(keys never rotate); set {ns}:dkim.rotationDays (e.g. 180) or remove dkim.start"
            )
        return p
    if d.start is None:
        p.append(
            f"{ns}:dkim.start: is required with dkim.rotationDays {d.rotation_days}; set "
            "the date the first new key signs, at least dkim.publishDays "
            f"({d.publish_days}) from today, with `pulumi config set --path {ns}:dkim.start YYYY-MM-DD`"
        )
    if d.publish_days + d.grace_days > d.rotation_days:
        p.append(
            f"{ns}:dkim.rotationDays: {d.rotation_days} is shorter than dkim.publishDays "
            f"({d.publish_days}) + dkim.graceDays ({d.grace_days}); the next key would "
            "appear before the previous one's grace is over: raise rotationDays or "
            "shorten the other two"
        )
    return p


def _check_quota(s: Settings) -> list[str]:
    """A quota beyond the whole mail volume can never be enforced; warnings must be
    distinct percentages below 100."""
    p: list[str] = []
    volume_mb = s.hetzner.mail_volume_gb * 1024
    fix = f"lower it (0 is unlimited), or raise {ns}:hetzner.mailVolumeGb"
    if s.quota.default_mb > volume_mb:
        p.append(
            f"{ns}:quota.defaultMb: {s.quota.default_mb} is more than the whole mail volume "
            f"({s.hetzner.mail_volume_gb} GB = {volume_mb} MB); {fix}"
        )
    for i, u in enumerate(s.users):
        if u.quota_mb is not None and u.quota_mb > volume_mb:
            p.append(
                f"{ns}:users[{i}].quotaMb: {u.quota_mb} is more than the whole mail volume "
                f"({s.hetzner.mail_volume_gb} GB = {volume_mb} MB); {fix}"
            )
    w = s.quota.warn_at
    if any(not 0 < x < 100 for x in w) or len(set(w)) != len(w):
        p.append(
            f"{ns}:quota.warnAt: {_fmt(list(w))} must be distinct percentages between 1 and 99; "
            "use e.g. [80, 95] (or [] for no warnings)"
        )
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
            p.append(
                f"{key}: {s.admin.mailbox!r} is not one of {ns}:users; name an active "
                "user, who receives postmaster@, abuse@ and the DMARC/TLS-RPT reports"
            )
        elif not users[box].active:
            p.append(
                f"{key}: {s.admin.mailbox!r} is an inactive user (active: false); name an active user, or activate it"
            )
        if p:
            return p
    configured = {u.address for u in s.users} | {a.address for a in s.aliases}
    missing = [r for r in s.role_addresses if r not in configured]
    if missing and s.admin_mailbox is None:
        p.append(
            f"{key}: there is no active user to receive {', '.join(missing)}; add a user to "
            f"{ns}:users (the first active one is the default admin mailbox) or route these "
            f"addresses with {ns}:aliases"
        )
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
            where = (
                f"{ns}:aliases[{index[r]}]" if r in index else f"{ns}:users[{[u.address for u in s.users].index(r)}]"
            )
            p.append(
                f"{where}: {r!r} is a role address and must reach an active mailbox of this "
                "stack (outside forwards break SPF, inactive entries refuse mail); add an "
                f"active user to its 'to' list, or remove the entry and let {ns}:admin.mailbox "
                "receive it"
            )
    return p
