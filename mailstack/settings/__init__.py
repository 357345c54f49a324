"""Typed stack settings, parsed and validated from Pulumi stack config.

Everything downstream (rendering, resources, the lab) takes a `Settings`. Parsing is a
pure function of the raw config mapping, so it is tested without Pulumi; every error
names the config key path, the bad value and the fix, and all errors of one run are
reported together before a single resource is declared.

One module per group of sections (`accounts`, `servers`, `mail`, `backup`), the root
model (`model`), the checks pydantic's types can't express, one per section (`checks`,
`checks_servers`), and the loading (`load`). Import from `mailstack.settings`: every name is here.
"""

from __future__ import annotations

from .accounts import ROLE_LOCAL_PARTS, Alias, User
from .backup import (
    _CALENDAR_RE,
    _KNOWN_HOST_RE,
    _S3_TARGET_RE,
    _SFTP_TARGET_RE,
    BACKUP_TARGET_FIX,
    S3_FIX,
    STORAGE_BOX_DEFAULT_LOCATIONS,
    Backup,
    Keep,
    S3Credentials,
    StorageBoxSettings,
    s3_target,
    sftp_target,
)
from .base import (
    _BCRYPT_RE,
    _DOMAIN_RE,
    _HOSTLABEL_RE,
    _LOCALPART_RE,
    _SHA512_CRYPT_RE,
    HASH_FIX,
    MIN_RSA_BITS,
    NAMESPACE,
    SettingsError,
    _fmt,
    _lower,
    _Model,
)
from .checks import check
from .load import load_settings, load_stack, provider_problems, with_clock
from .mail import LETSENCRYPT, Acme, Dkim, Dmarc, Dns, Limits, MtaSts, Quota, Resolver, Spam, Status
from .model import Settings
from .servers import DEFAULT_SERVER_TYPE, SUPPORTED_IMAGES, Admin, Hetzner, Hostnames, ServerTypes, Updates

__all__ = [
    "BACKUP_TARGET_FIX",
    "DEFAULT_SERVER_TYPE",
    "HASH_FIX",
    "LETSENCRYPT",
    "MIN_RSA_BITS",
    "NAMESPACE",
    "ROLE_LOCAL_PARTS",
    "S3_FIX",
    "STORAGE_BOX_DEFAULT_LOCATIONS",
    "SUPPORTED_IMAGES",
    "Acme",
    "Admin",
    "Alias",
    "Backup",
    "Dkim",
    "Dmarc",
    "Dns",
    "Hetzner",
    "Hostnames",
    "Keep",
    "Limits",
    "MtaSts",
    "Quota",
    "Resolver",
    "S3Credentials",
    "ServerTypes",
    "Settings",
    "SettingsError",
    "Spam",
    "Status",
    "StorageBoxSettings",
    "Updates",
    "User",
    "check",
    "load_settings",
    "load_stack",
    "provider_problems",
    "with_clock",
    "s3_target",
    "sftp_target",
    # Private to the settings, kept importable from here for code written against the
    # single module this package replaced.
    "_BCRYPT_RE",
    "_CALENDAR_RE",
    "_DOMAIN_RE",
    "_HOSTLABEL_RE",
    "_KNOWN_HOST_RE",
    "_LOCALPART_RE",
    "_Model",
    "_S3_TARGET_RE",
    "_SFTP_TARGET_RE",
    "_SHA512_CRYPT_RE",
    "_fmt",
    "_lower",
]
