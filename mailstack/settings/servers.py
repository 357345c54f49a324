"""The servers: their names, Hetzner's side (location, image, types, network, volume),
who administers them and how they update."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import _lower, _Model

# What Hetzner offers (server types, locations, images) is not kept here: it changes
# (cx22-cx52 and cpx11-cpx51 were retired in January 2026), so the program asks the
# provider's data sources at preview time (`mailstack.catalogue`, `components/catalogue.py`).
# This is the one default; `hcloud server-type list` shows what else a location offers.
DEFAULT_SERVER_TYPE = "cx23"
SUPPORTED_IMAGES = frozenset({"debian-12"})


class Hostnames(_Model):
    domain: str | None = Field(
        default=None, description="the domain the host names live under; unset: the first of `domains`"
    )
    mx1: str = Field(default="mx1", description="mx1's name (a single DNS label)")
    mx2: str = Field(default="mx2", description="mx2's name")
    imap: str = Field(default="imap", description="the IMAP host's name (the imap role's host; mx1 in `single`)")
    smtp: str = Field(
        default="smtp", description="the submission name clients are given (an A/AAAA of mx1; may equal `mx1`)"
    )


class ServerTypes(_Model):
    mx1: str = Field(
        default=DEFAULT_SERVER_TYPE, description="mx1's Hetzner server type (checked against the catalogue at preview)"
    )
    imap: str = Field(default=DEFAULT_SERVER_TYPE, description="the imap host's server type")
    mx2: str = Field(default=DEFAULT_SERVER_TYPE, description="mx2's server type")


class Hetzner(_Model):
    location: str = Field(
        default="fsn1", description="the Hetzner location of every server (checked against the catalogue at preview)"
    )
    image: str = Field(
        default="debian-12",
        description="the server image; only `debian-12` (the configs target its Dovecot 2.3 and PostgreSQL 15)",
    )
    server_types: ServerTypes = Field(default=ServerTypes(), description="the server type of each host")
    private_cidr: str = Field(
        default="10.77.0.0/16",
        description="the private network (IPv4, /24 or larger); the hosts take .11, .12, .13 of its first /24 subnet",
    )
    mail_volume_gb: int = Field(
        default=20, ge=10, le=10240, description="the size of the mail volume (on the imap host) in GB"
    )


class Admin(_Model):
    ssh_keys: tuple[str, ...] = Field(
        default=(), description="OpenSSH public keys allowed to log in as root (exactly these, plus the deploy key)"
    )
    ssh_cidrs: tuple[str, ...] = Field(
        default=(),
        description=(
            "networks allowed to reach SSH; required: the deploy steps run over SSH, so the deploying machine must be inside"
        ),
    )
    # The mailbox that receives the role addresses (postmaster@ and abuse@ of every
    # domain, the DMARC and TLS-RPT reports) the aliases don't route.
    mailbox: str | None = Field(
        default=None,
        description=(
            "the user who receives every role address the aliases don't route (postmaster@, abuse@, "
            "the DMARC/TLS-RPT report addresses); unset: the first active user"
        ),
    )

    _norm = field_validator("mailbox", mode="before")(_lower)


class Updates(_Model):
    # Unattended upgrades install security and backports updates every day; when one needs
    # a reboot (a new kernel), the host reboots at this time of day (server time, UTC).
    reboot: bool = Field(default=True, description="reboot when an installed update needs it (a new kernel)")
    reboot_time: str = Field(default="04:30", description="when that reboot happens, HH:MM (24-hour, server time UTC)")
