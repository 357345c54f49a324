"""What every renderer of a deploy step gets: the settings, the hosts with their addresses,
and the stack's secrets. Its own module, so the renderers and the step list (deploy.py)
import it without importing each other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from . import hosts as H
from .settings import Settings


@dataclass(frozen=True)
class Secrets:
    """Generated once per stack (pulumi-random / pulumi-tls), or by the lab."""

    replication_password: str
    lookup_password: str
    rspamd_controller_password: str
    dkim_keys: Mapping[str, str]  # domain -> RSA private key, PEM (the signing generation)
    user_hashes: Mapping[str, str]  # address -> crypt hash ($6$ or $2b$)
    # Per data host (role): restic repository password, and the OpenSSH private key it
    # reaches the backup target with. Empty when backups are off.
    backup_passwords: Mapping[str, str] = field(default_factory=dict)
    backup_keys: Mapping[str, str] = field(default_factory=dict)
    # With a Storage Box: the key the box was created with, which only the `backup-keys`
    # step uses, to write the box's .ssh/authorized_keys (Hetzner can't change a box's keys).
    backup_manager_key: str = ""
    # The stack's deploy key (OpenSSH public line): kept in root's authorized_keys next to
    # the admin keys. Empty in the lab, which deploys without SSH.
    deploy_public_key: str = ""
    # With DKIM rotation: every generation the schedule publishes (mailstack/dkim.py),
    # selector -> domain -> PEM, the signing one included. Empty: only `dkim_keys`.
    dkim_keyring: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The role Dovecot's quota clone writes mailbox usage with (database.QUOTA_USER).
    quota_password: str = ""
    # Redis on the MX hosts (redis.py): mx2's Rspamd reaches mx1's over the private network.
    redis_password: str = ""
    # OpenSMTPD's SRS key (mx.SRS_CONF): forwarded mail's envelope sender is rewritten
    # with it on mx1, and mx1 and mx2 check bounces to those addresses with it.
    srs_key: str = ""


@dataclass(frozen=True)
class Context:
    settings: Settings
    hosts: Mapping[str, H.Host]
    addresses: Mapping[str, H.Address]
    secrets: Secrets
    # The Storage Box the stack created ({"server": ..., "username": ...}; "port" only
    # where it isn't a Storage Box's 23, as in a test), when `backup.target` is `storagebox`.
    storage_box: Mapping[str, str] | None = None

    def host_for(self, service: str) -> H.Host:
        return H.find(dict(self.hosts), service)
