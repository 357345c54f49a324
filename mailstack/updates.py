"""Unattended upgrades on every host: which origins, what restarts, when to reboot.

Debian's default origins skip bookworm-backports, where opensmtpd comes from, so the
list is ours (#clear first, so a changed conffile of the package can't widen or narrow
it). Only packages pinned to backports come from there (cloud-init/base/apt-pin), so
allowing the origin upgrades opensmtpd and nothing else. Daemons restart on their own
package upgrades (Debian's maintainer scripts); needrestart restarts those still running
an old library (openssl, libc), and a new kernel reboots the host at the configured time.
"""

from __future__ import annotations

from . import templates
from .bundle import Bundle, File
from .settings import Settings

CONF = "/etc/apt/apt.conf.d/51mailstack-unattended-upgrades"
NEEDRESTART_CONF = "/etc/needrestart/conf.d/mailstack.conf"
# apt's origin fields of what the servers install (Release files of deb.debian.org).
ORIGINS = (
    ("Debian", "${distro_codename}", "Debian"),  # point releases
    ("Debian", "${distro_codename}-security", "Debian-Security"),  # security updates
    ("Debian Backports", "${distro_codename}-backports", "Debian Backports"),  # opensmtpd
)


def apt_conf(settings: Settings) -> str:
    u = settings.updates
    return templates.render(
        "updates/unattended-upgrades.conf.j2", origins=ORIGINS, reboot=u.reboot, reboot_time=u.reboot_time
    )


def bundle(settings: Settings) -> Bundle:
    files = (File(CONF, apt_conf(settings)), File(NEEDRESTART_CONF, templates.read("updates/needrestart.conf")))
    return Bundle(files, templates.render("updates/deploy.sh.j2", conf=CONF, needrestart_conf=NEEDRESTART_CONF))
