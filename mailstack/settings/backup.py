"""Backups (restic): the target (a Storage Box, SFTP, S3 or none), its credentials,
schedule and retention, and the parsers of the target URLs."""

from __future__ import annotations

import re

from pydantic import Field

from .base import _Model

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
S3_FIX = (
    "`pulumi config set --secret --path 'mailstack:backup.s3.accessKeyId' <id>` and "
    "`pulumi config set --secret --path 'mailstack:backup.s3.secretAccessKey' <key>`"
)


class StorageBoxSettings(_Model):
    type: str = Field(default="bx11", description="the Storage Box type (checked against the catalogue at preview)")
    location: str | None = Field(
        default=None,
        description=(
            "the Storage Box's location; unset: `hetzner.location` where boxes exist (fsn1, nbg1, hel1), else fsn1"
        ),
    )


class Keep(_Model):
    daily: int = Field(default=7, ge=0, le=3650, description="daily snapshots kept")
    weekly: int = Field(default=5, ge=0, le=520, description="weekly snapshots kept")
    monthly: int = Field(default=12, ge=0, le=1200, description="monthly snapshots kept")


class S3Credentials(_Model):
    # For an `s3:` target; secrets (`pulumi config set --secret --path ...`). They reach
    # the data hosts only in a 0600 file of the backup step.
    access_key_id: str = Field(default="", description="the S3 access key id, for an `s3:` target (secret)")
    secret_access_key: str = Field(default="", description="the S3 secret access key, for an `s3:` target (secret)")
    region: str = Field(default="", description="the S3 region, if the service wants one")


class Backup(_Model):
    # One restic repository per data host, under this target.
    target: str = Field(
        default="storagebox",
        description=(
            "where backups go: `storagebox` (a Storage Box the stack creates), `sftp://user@host[:port]/path`, "
            "`s3:https://endpoint/bucket[/path]` or `none`"
        ),
    )
    s3: S3Credentials = Field(default=S3Credentials(), description="the credentials of an `s3:` target")
    storage_box: StorageBoxSettings = Field(
        default=StorageBoxSettings(), description="the Storage Box of the `storagebox` target"
    )
    # Checked again by systemd-analyze on the server.
    schedule: str = Field(
        default="*-*-* 03:17:00", description="when backups run: a systemd OnCalendar expression (UTC)"
    )
    keep: Keep = Field(default=Keep(), description="how many snapshots are kept")
    check_every_days: int = Field(
        default=7, ge=1, le=365, description="how often the repository is checked (`restic check`), in days"
    )
    restore_on_empty: bool = Field(
        default=True,
        description=(
            "a fresh host with an empty mail store (or mail database) restores the latest snapshot in its "
            "deploy step, before it accepts mail"
        ),
    )
    known_hosts: tuple[str, ...] = Field(
        default=(),
        description=(
            "known_hosts lines for an SFTP target (`ssh-keyscan -p PORT HOST`); empty: the key first seen is trusted and kept"
        ),
    )

    @property
    def enabled(self) -> bool:
        return self.target != "none"


_SFTP_TARGET_RE = re.compile(
    r"^sftp://(?P<user>[a-z0-9_][a-z0-9_.-]*)@(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])"
    r"(:(?P<port>\d{1,5}))?/(?P<path>[A-Za-z0-9_./-]*)$"
)
_S3_TARGET_RE = re.compile(
    r"^s3:(?P<scheme>https?://)?(?P<host>[A-Za-z0-9.-]+(:\d{1,5})?)/(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])"
    r"(?P<path>/[A-Za-z0-9_./-]*)?$"
)
_CALENDAR_RE = re.compile(r"^[A-Za-z0-9*,./:~ -]{1,100}$")
_KNOWN_HOST_RE = re.compile(r"^\S+ (ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}$")


def sftp_target(target: str) -> dict[str, str] | None:
    """user, host, port, path of an sftp:// backup target (None if it isn't one)."""
    m = _SFTP_TARGET_RE.match(target)
    if not m:
        return None
    return {"user": m["user"], "host": m["host"].strip("[]"), "port": m["port"] or "22", "path": m["path"].strip("/")}


def s3_target(target: str) -> dict[str, str] | None:
    """endpoint (with scheme), bucket, path of an s3: backup target (None if it isn't one)."""
    m = _S3_TARGET_RE.match(target)
    if not m:
        return None
    return {
        "endpoint": f"{m['scheme'] or 'https://'}{m['host']}",
        "bucket": m["bucket"],
        "path": (m["path"] or "").strip("/"),
    }
