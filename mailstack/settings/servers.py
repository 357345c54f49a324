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


class Updates(_Model):
    # Unattended upgrades install security and backports updates every day; when one needs
    # a reboot (a new kernel), the host reboots at this time of day (server time, UTC).
    reboot: bool = True
    reboot_time: str = "04:30"
