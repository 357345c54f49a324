"""The Debian 12 root file system every lab host boots: what a Hetzner debian-12 image
has (systemd, cloud-init, openssh-server, ...) and no mail packages, since cloud-init
installs those from user-data exactly as on Hetzner.

Built in two stages (debootstrap can't resolve virtual packages in one go) through the
apt cache, and cached under CACHE/rootfs-<recipe hash>, so only a changed recipe rebuilds.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .aptcache import LOCAL_URL, PROXY_URL
from .util import CACHE, cache_lock, log, out, run

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
STAGE1 = ["systemd-sysv", "udev", "dbus", "iproute2", "ca-certificates", "apt-utils", "gpgv"]
STAGE2 = [
    "cloud-init",
    "openssh-server",
    "sudo",
    "curl",
    "less",
    "procps",
    "iputils-ping",
    "netbase",
    "locales",
    "kmod",
    "python3",
    "ncurses-term",
    "cron",
    "logrotate",
    "rsyslog",
    "debian-archive-keyring",
    "gnupg",
    "lsb-release",
    "psmisc",
    "dnsutils",
]

# Lab-only additions, each needed because the lab is not Hetzner:
FILES = {
    # Hetzner's metadata service is replaced by a NoCloud seed bind-mounted at boot.
    "/etc/cloud/cloud.cfg.d/90-mailstack-lab.cfg": "datasource_list: [ NoCloud, None ]\n"
    "system_info:\n  network:\n    renderers: [ networkd ]\n",
    # The hosts reach nothing but the lab network; packages come through the apt cache.
    "/etc/apt/apt.conf.d/01mailstack-lab-proxy": f'Acquire::http::Proxy "{PROXY_URL}";\n',
    # As on Hetzner's image: updates and security too, so package versions match.
    "/etc/apt/sources.list": "deb http://deb.debian.org/debian bookworm main\n"
    "deb http://deb.debian.org/debian bookworm-updates main\n"
    "deb http://deb.debian.org/debian-security bookworm-security main\n",
    # Before unbound is installed, names resolve at the lab's authoritative server.
    "/etc/resolv.conf": "nameserver 198.51.100.1\n",
}
FIXUPS = r"""
set -e
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
systemctl enable systemd-networkd.service
# 17 s per boot in a container, and apt timers would race the deploy steps for the lock.
systemctl mask e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer \
  apt-daily.service apt-daily-upgrade.service systemd-timesyncd.service 2>/dev/null || true
# A container has no console getty worth waiting for.
systemctl mask console-getty.service 2>/dev/null || true
rm -f /etc/ssh/ssh_host_*
apt-get clean
rm -rf /var/lib/apt/lists/*
"""


def recipe_key() -> str:
    h = hashlib.sha256()
    h.update(repr((MIRROR, SUITE, STAGE1, STAGE2, sorted(FILES.items()), FIXUPS, 2)).encode())
    return h.hexdigest()[:12]


def path() -> Path:
    return CACHE / f"rootfs-{recipe_key()}"


def ensure() -> Path:
    dest = path()
    if (dest / ".mailstack-lab-complete").exists():
        return dest
    with cache_lock("rootfs"):
        return _build(dest)


@contextmanager
def no_daemons(root: Path):
    """While packages are installed into `root` (a chroot), no maintainer script starts a
    daemon there (policy-rc.d answers "not allowed")."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def apt_install(root: Path, packages: list[str], capture: bool = True) -> None:
    """apt-get update and install (no recommends) in the chroot `root`, through the cache."""
    proxy = ["-o", f"Acquire::http::Proxy={LOCAL_URL}"]
    run(["chroot", str(root), "apt-get", *proxy, "update", "-q"], capture=capture)
    run(
        ["chroot", str(root), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *proxy]
        + ["install", "-y", "-q", "--no-install-recommends", *packages],
        capture=capture,
    )


def _build(dest: Path) -> Path:
    if (dest / ".mailstack-lab-complete").exists():  # another lab built it meanwhile
        return dest
    t0 = time.monotonic()
    tmp = CACHE / f"rootfs-build-{recipe_key()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    log(f"building root file system {dest.name} (two-stage debootstrap via the apt cache)")
    env_proxy = ["env", f"http_proxy={LOCAL_URL}"]
    run(
        [*env_proxy, "debootstrap", "--variant=minbase", f"--include={','.join(STAGE1)}", SUITE, str(tmp), MIRROR],
        capture=False,
    )
    log(f"stage 1 done in {time.monotonic() - t0:.0f}s")
    with no_daemons(tmp):
        apt_install(tmp, STAGE2, capture=False)
        for p, content in FILES.items():
            f = tmp / p.lstrip("/")
            f.parent.mkdir(parents=True, exist_ok=True)
            if f.is_symlink():
                f.unlink()
            f.write_text(content)
        run(["chroot", str(tmp), "bash", "-c", FIXUPS])
    (tmp / ".mailstack-lab-complete").write_text(recipe_key() + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    size = out(["du", "-sh", str(dest)]).split()[0]
    log(f"root file system ready in {time.monotonic() - t0:.0f}s, {size}")
    return dest
