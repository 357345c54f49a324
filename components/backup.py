"""The off-server backup target: a Hetzner Storage Box (when `backup.target` is
`storagebox`). The hosts' restic passwords and SSH keys are in StackSecrets; the backup
itself is the `backup-<role>` deploy step (mailstack/backup.py)."""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud
import pulumi_random as random

from mailstack.settings import Settings


class BackupStorage(pulumi.ComponentResource):
    box: hcloud.StorageBox | None
    access: pulumi.Output[dict[str, str] | None]

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        public_keys: pulumi.Output[list[str]],
        labels: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mailstack:index:BackupStorage", name, None, opts)
        self.box = None
        self.access = pulumi.Output.from_input(None)
        if settings.backup.target == "storagebox":
            # The box's own password is never used (the hosts log in with their keys), but
            # Hetzner requires one; it stays in state.
            password = random.RandomPassword(
                "storage-box-password",
                length=32,
                special=True,
                override_special="-_.+",
                min_lower=1,
                min_upper=1,
                min_numeric=1,
                min_special=1,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.box = hcloud.StorageBox(
                name,
                name=name,
                location=settings.storage_box_location,
                storage_box_type=settings.backup.storage_box.type,
                password=password.result,
                # Its own key (for the `backup-keys` step) and the data hosts' at creation.
                ssh_keys=public_keys,
                access_settings=hcloud.StorageBoxAccessSettingsArgs(
                    ssh_enabled=True,
                    reachable_externally=False,
                    samba_enabled=False,
                    webdav_enabled=False,
                    zfs_enabled=False,
                ),
                delete_protection=True,
                labels=labels,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # It holds the only copy of lost mail: never deleted by a `pulumi up`.
                    protect=True,
                    # A destroy or a rename leaves the box (and the backups) in the project.
                    retain_on_delete=True,
                    # Hetzner can't change a box's keys, so a changed key list would replace
                    # the box (and its backups); the `backup-keys` deploy step writes the
                    # box's .ssh/authorized_keys instead (docs/backup.md).
                    ignore_changes=["sshKeys"],
                ),
            )
            self.access = pulumi.Output.all(self.box.server, self.box.username).apply(
                lambda v: {"server": v[0], "username": v[1]}
            )
        self.register_outputs({})
