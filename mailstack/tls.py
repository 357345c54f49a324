"""TLS certificates: which names each host's certificate carries, and the deploy step
that gets them from ACME (certbot, HTTP-01 via nginx's port-80 site).

One certbot lineage per host, named `mailstack`, so adding a mail domain extends the
same certificate (`--expand`) and every daemon keeps reading the same two files in
/etc/mailstack/tls. Until ACME has run, cloud-init's self-signed pair sits there.
"""
from __future__ import annotations

import shlex

from . import hosts as H
from . import templates
from .bundle import Bundle, File
from .deploy import Context
from .settings import Settings

CERT_NAME = "mailstack"
WEBROOT = "/var/www/acme"
TLS_DIR = "/etc/mailstack/tls"
DEPLOY_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/mailstack"


def certificate_names(settings: Settings, host: H.Host) -> list[str]:
    """Every name clients reach this host by; the first is the host's own name."""
    names = [host.fqdn]
    if host.runs(H.SUBMISSION):
        names.append(settings.fqdn("smtp"))
    if host.runs(H.IMAP):
        names.append(settings.fqdn("imap"))
    if host.runs(H.WEB):
        for d in settings.domains:
            names += [f"mta-sts.{d}", f"autoconfig.{d}", f"autodiscover.{d}"]
    return list(dict.fromkeys(names))


def certbot_command(settings: Settings, host: H.Host, webroot: str = WEBROOT) -> list[str]:
    cmd = [
        "certbot", "certonly", "--non-interactive", "--agree-tos",
        "--email", settings.acme.email,
        "--server", settings.acme.directory,
        "--webroot", "-w", webroot,
        "--cert-name", CERT_NAME,
        # Same key type as the bootstrap certificate, whatever certbot's default becomes.
        "--key-type", "ecdsa", "--elliptic-curve", "secp256r1",
        "--expand",
    ]
    for name in certificate_names(settings, host):
        cmd += ["-d", name]
    return cmd


def deploy_hook() -> str:
    return templates.read("tls/deploy-hook.sh")


def certificates_bundle(ctx: Context, host: H.Host) -> Bundle:
    """Step certificates-<role>."""
    s = ctx.settings
    cmd = certbot_command(s, host)
    script = templates.render(
        "tls/certificates.sh.j2",
        webroot=WEBROOT,
        hook=DEPLOY_HOOK,
        command_line=" ".join(shlex.quote(a) for a in cmd),
        server_line=shlex.quote(f"server = {s.acme.directory}"),
        names=certificate_names(s, host),
    )
    return Bundle(files=(File(DEPLOY_HOOK, deploy_hook(), mode=0o755),), script=script)
