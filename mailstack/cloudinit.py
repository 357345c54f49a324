"""cloud-init user-data per role (the base install) and the step that waits for it.

user-data is a pure function of the host (role, names, services) and the private
network: Hetzner serves it to any process on the server, and changing it replaces the
server. So mail domains, users, admin addresses and secrets never reach it; the deploy
steps bring those later, over SSH.
"""

from __future__ import annotations

from . import firewall, templates
from . import hosts as H
from .bundle import Bundle
from .context import Context
from .settings import Settings

USER_DATA_LIMIT = 32 * 1024  # Hetzner rejects larger user_data
MARKER = "/var/lib/mailstack/base-installed"
DONE_LINE = "mailstack: base install done for"

COMMON_PACKAGES = (
    "ca-certificates",
    "openssl",
    "postgresql-15",
    "certbot",
    "unbound",
    "nftables",
    "unattended-upgrades",
    "nginx-light",
)
MX_PACKAGES = (
    "opensmtpd",
    "opensmtpd-extras",
    "opensmtpd-filter-rspamd",
    "opensmtpd-filter-senderscore",
    "rspamd",
    "redis-server",
)
IMAP_PACKAGES = (
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-lmtpd",
    "dovecot-pgsql",
    "dovecot-sieve",
    "dovecot-managesieved",
)


def packages(host: H.Host) -> list[str]:
    out = list(COMMON_PACKAGES)
    if host.runs(H.MX) or host.runs(H.BACKUP_MX) or host.runs(H.SUBMISSION):
        out += MX_PACKAGES
    if host.runs(H.IMAP):
        out += IMAP_PACKAGES
    return out


def bootstrap_names(settings: Settings, host: H.Host) -> list[str]:
    """Names on the self-signed bootstrap certificate: host names only (no mail domain,
    so user-data stays independent of them)."""
    names = [host.fqdn]
    if host.runs(H.SUBMISSION):
        names.append(settings.fqdn("smtp"))
    if host.runs(H.IMAP):
        names.append(settings.fqdn("imap"))
    return list(dict.fromkeys(names))


def user_data(settings: Settings, host: H.Host) -> str:

    volume = host.runs(H.IMAP)
    text = templates.render(
        "user-data.yaml.j2",
        host=host,
        services=" ".join(sorted(host.services)),
        packages=packages(host),
        aliases=templates.render("base/aliases.j2", host_domain=settings.host_domain),
        apt_pin=templates.read("base/apt-pin"),
        sshd=templates.read("base/sshd.conf"),
        nftables=firewall.nftables(settings, host),
        tls_bootstrap=templates.render("tls/bootstrap.sh.j2", names=bootstrap_names(settings, host)),
        vmail_volume=templates.read("base/vmail-volume.sh") if volume else "",
        vmail_unit=templates.read("base/vmail-volume.service") if volume else "",
        dovecot_dropin=templates.read("base/dovecot-vmail.conf") if volume else "",
        base_script=templates.render("base/base.sh.j2", vmail_uid=H.VMAIL_UID, vmail_volume=volume),
        nginx_acme=templates.read("base/nginx-acme.conf"),
    )
    size = len(text.encode())
    if size > USER_DATA_LIMIT:
        raise ValueError(f"user-data for {host.role} is {size} bytes; Hetzner allows {USER_DATA_LIMIT}")
    return text


def wait_bundle(ctx: Context) -> Bundle:
    """Step wait-<role>: block until cloud-init has finished the base install, and fail
    with cloud-init's own output if it did not."""
    return Bundle(script=templates.render("base/wait.sh.j2", marker=MARKER, vmail_uid=H.VMAIL_UID))
