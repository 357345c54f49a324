"""The checks of the servers' sections (hostnames, Hetzner, admin, updates) and of the
backups, one per section; `checks.check` runs them with the others."""

from __future__ import annotations

import ipaddress
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from .backup import _CALENDAR_RE, _KNOWN_HOST_RE, BACKUP_TARGET_FIX, S3_FIX, s3_target, sftp_target
from .base import _DOMAIN_RE, _HOSTLABEL_RE, MIN_RSA_BITS, NAMESPACE, _fmt
from .model import Settings
from .servers import SUPPORTED_IMAGES

ns = NAMESPACE


def _check_hostnames(s: Settings) -> list[str]:
    p: list[str] = []
    if s.hostnames.domain is not None and not _DOMAIN_RE.match(s.hostnames.domain):
        p.append(f"{ns}:hostnames.domain: {s.hostnames.domain!r} is not a valid domain name; use e.g. 'example.org'")
    labels: dict[str, str] = {}
    for label in ("mx1", "mx2", "imap", "smtp"):
        v = getattr(s.hostnames, label)
        if not _HOSTLABEL_RE.match(v):
            p.append(
                f"{ns}:hostnames.{label}: {v!r} is not a single DNS label; use letters, digits and '-', e.g. '{label}'"
            )
        if v in labels and not (label == "smtp" and labels[v] == "mx1"):
            p.append(f"{ns}:hostnames.{label}: {v!r} is already the name of {labels[v]}; choose a distinct name")
        labels.setdefault(v, label)
    return p


def _check_hetzner(s: Settings) -> list[str]:
    p: list[str] = []
    h = s.hetzner
    # Location and server types are checked against the live catalogue at preview time.
    if h.image not in SUPPORTED_IMAGES:
        p.append(
            f"{ns}:hetzner.image: {h.image!r} is not supported; use 'debian-12' (the configs target Dovecot 2.3 and PostgreSQL 15)"
        )
    try:
        net = ipaddress.ip_network(h.private_cidr)
        if net.version != 4 or not net.is_private or net.prefixlen > 24:
            raise ValueError
    except ValueError:
        p.append(
            f"{ns}:hetzner.privateCidr: {h.private_cidr!r} is not a private IPv4 network of /24 or larger; use e.g. '10.77.0.0/16'"
        )
    return p


def _check_admin(s: Settings) -> list[str]:
    p = _ssh_key_problems(s.admin.ssh_keys)
    for i, cidr in enumerate(s.admin.ssh_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            p.append(
                f"{ns}:admin.sshCidrs[{i}]: {cidr!r} is not a valid CIDR ({exc}); use e.g. '203.0.113.7/32' or '2001:db8::/48'"
            )
    if not s.admin.ssh_cidrs:
        p.append(
            f"{ns}:admin.sshCidrs: is empty; list the networks allowed to reach SSH (the deploy steps need it), e.g. ['203.0.113.7/32']"
        )
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
            p.append(
                f"{key}: is the same key as {ns}:admin.sshKeys[{seen[blob]}] "
                "(Hetzner holds a key once per project); remove one of them"
            )
        seen.setdefault(blob, i)
    return p


def _check_updates(s: Settings) -> list[str]:
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", s.updates.reboot_time):
        return [
            f"{ns}:updates.rebootTime: {s.updates.reboot_time!r} is not a time of day HH:MM "
            "(24-hour, server time UTC); use e.g. '04:30'"
        ]
    return []


def _check_backup(s: Settings, secret_keys: set[str]) -> list[str]:
    p: list[str] = []
    b, key = s.backup, f"{ns}:backup"
    if b.target.startswith("s3:"):
        t3 = s3_target(b.target)
        if t3 is None:
            p.append(
                f"{key}.target: {_fmt(b.target)} is not an S3 target; use "
                "'s3:https://endpoint/bucket[/path]', e.g. 's3:https://fsn1.your-objectstorage.com/my-bucket/mailstack'"
            )
        elif ".." in t3["path"].split("/"):
            p.append(f"{key}.target: {_fmt(b.target)} climbs out of the bucket; name a path inside it")
        if not (b.s3.access_key_id and b.s3.secret_access_key):
            p.append(f"{key}.s3: an S3 target needs accessKeyId and secretAccessKey; set them with {S3_FIX}")
        elif key not in secret_keys:
            p.append(
                f"{key}.s3: the S3 credentials are stored in clear text in the stack file; "
                f"they are secrets: set them with {S3_FIX}"
            )
    elif b.s3.access_key_id or b.s3.secret_access_key:
        p.append(
            f"{key}.s3: S3 credentials are set but the target {_fmt(b.target)} is not an "
            "s3: target; remove them (`pulumi config rm --path 'mailstack:backup.s3'`) or "
            "name an s3: target"
        )
    elif b.target not in ("storagebox", "none"):
        t = sftp_target(b.target)
        if t is None:
            p.append(f"{key}.target: {_fmt(b.target)} is not a backup target; {BACKUP_TARGET_FIX}")
        elif not t["path"] or ".." in t["path"].split("/"):
            p.append(
                f"{key}.target: {_fmt(b.target)} names no directory; add one, "
                "e.g. 'sftp://backup@backup.example.net/mailstack'"
            )
        elif not 0 < int(t["port"]) < 65536:
            p.append(f"{key}.target: port {t['port']} is out of range; use e.g. 22 (23 on a Storage Box)")
    if not _CALENDAR_RE.match(b.schedule):
        p.append(
            f"{key}.schedule: {_fmt(b.schedule)} is not a systemd calendar expression; "
            "use e.g. 'daily' or '*-*-* 03:17:00' (see `man systemd.time`)"
        )
    if b.keep.daily + b.keep.weekly + b.keep.monthly == 0:
        p.append(f"{key}.keep: keeps no snapshot at all; set e.g. {{daily: 7, weekly: 5, monthly: 12}}")
    for i, line in enumerate(b.known_hosts):
        if not _KNOWN_HOST_RE.match(line.strip()):
            p.append(
                f"{key}.knownHosts[{i}]: {_fmt(line)} is not a known_hosts line; "
                "use the output of `ssh-keyscan -p PORT HOST`, e.g. '[host]:23 ssh-ed25519 AAAA...'"
            )
    return p
