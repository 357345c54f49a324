#!/bin/bash
# Mounts imap's Hetzner volume at /var/vmail, so mail survives a rebuilt server.
# Hetzner exposes it as /dev/disk/by-id/scsi-0HC_Volume_<id>, possibly only after first
# boot (the attachment is a separate API call), so this runs at every boot and again
# from the wait step. Without a volume (the local lab) /var/vmail stays on the root disk.
set -euo pipefail
shopt -s nullglob
mnt=/var/vmail
log() {
  echo "mailstack-vmail-volume: $*"
  logger -t mailstack-vmail-volume -- "$*" 2>/dev/null || true
}

install -d "$mnt"
devs=(/dev/disk/by-id/scsi-0HC_Volume_*)
if mountpoint -q "$mnt"; then
  :
elif [ ${#devs[@]} -eq 0 ]; then
  log "no Hetzner volume attached; $mnt stays a directory on the root disk"
elif [ ${#devs[@]} -gt 1 ]; then
  log "error: ${#devs[@]} volumes attached (${devs[*]}); attach only the mail volume"
  exit 1
else
  dev=${devs[0]}
  uuid=$(blkid -s UUID -o value "$dev" || true)
  fstype=$(blkid -s TYPE -o value "$dev" || true)
  if [ -z "$uuid" ] || [ -z "$fstype" ]; then
    # Formatting here could destroy mail on a volume blkid failed to read.
    log "error: $dev has no file system; create the volume with format ext4"
    exit 1
  fi
  if ! grep -qs "^UUID=$uuid $mnt " /etc/fstab; then
    # A replaced volume has a new UUID: drop the old line rather than keep a dead mount.
    sed -i "\\|^[^#][^[:space:]]*[[:space:]]\\+$mnt[[:space:]]|d" /etc/fstab
    # nofail: a missing volume must not keep SSH from coming up.
    echo "UUID=$uuid $mnt $fstype defaults,nofail,x-systemd.device-timeout=30s 0 2" >> /etc/fstab
    systemctl daemon-reload 2>/dev/null || true
  fi
  if [ -n "$(ls -A "$mnt")" ]; then
    log "warning: $mnt on the root disk is not empty; the volume hides those files"
  fi
  mount "$mnt"
  log "mounted $dev (UUID=$uuid) at $mnt"
fi
chown vmail:vmail "$mnt"
chmod 0750 "$mnt"
