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
from .context import Context
from .settings import Settings

CERT_NAME = "mailstack"
WEBROOT = "/var/www/acme"
TLS_DIR = "/etc/mailstack/tls"
DEPLOY_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/mailstack"

# The TLS profile of every listener (smtpd 465/587/relay port, Dovecot 993/4190, nginx
# 443): Mozilla's "intermediate" guideline, version 5.7. TLS 1.3 suites are all AEAD and
# left to the library; for TLS 1.2 only ECDHE/DHE with AES-GCM or ChaCha20-Poly1305: no
# CBC, no SHA-1 MAC, no CAMELLIA or ARIA, no static RSA key exchange.
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
)
TLS_CURVES = ("X25519", "prime256v1", "secp384r1")
# Port 25 is opportunistic STARTTLS: a sending MTA that finds no common suite delivers in
# clear text instead, so refusing it an older suite lowers its mail's protection rather than
# raising it. Port 25 keeps TLS 1.2+ with the intermediate suites first (server order) and
# the remaining strong suites behind them (docs/hardening.md).
INBOUND_MX_CIPHERS = ":".join(INTERMEDIATE_CIPHERS) + ":HIGH:!aNULL:!eNULL:!MD5:!3DES:!RC4"


def openssl_ciphers() -> str:
    """The intermediate TLS 1.2 list in OpenSSL's syntax (nginx, Dovecot, smtpd)."""
    return ":".join(INTERMEDIATE_CIPHERS)


def libtls_protocols() -> str:
    """TLS_PROTOCOLS for libtls's tls_config_parse_protocols (smtpd's `protocols`)."""
    return ",".join(p.lower() for p in TLS_PROTOCOLS)


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
        "certbot",
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--email",
        settings.acme.email,
        "--server",
        settings.acme.directory,
        "--webroot",
        "-w",
        webroot,
        "--cert-name",
        CERT_NAME,
        # Same key type as the bootstrap certificate, whatever certbot's default becomes.
        "--key-type",
        "ecdsa",
        "--elliptic-curve",
        "secp256r1",
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
