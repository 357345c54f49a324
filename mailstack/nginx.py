"""nginx on the WEB host: MTA-STS policies and mail client autoconfiguration."""

from __future__ import annotations

from . import dns, tls
from . import hosts as H
from .bundle import Bundle, File
from .context import Context
from .templates import render

SITE = "/etc/nginx/sites-enabled/mailstack-web"
WEB_ROOT = "/var/www/mailstack"
TLS_DIR = "/etc/mailstack/tls"


def server_names(ctx: Context) -> list[str]:
    return [f"{label}.{d}" for d in ctx.settings.domains for label in ("mta-sts", "autoconfig", "autodiscover")]


def site_conf(ctx: Context) -> str:
    return render("nginx/mailstack-web.j2", names=server_names(ctx), tls_dir=TLS_DIR, web_root=WEB_ROOT, tls=tls)


def _clients(ctx: Context) -> dict[str, object]:
    s = ctx.settings
    return dict(domains=s.domains, primary_domain=s.primary_domain, imap_fqdn=s.fqdn("imap"), smtp_fqdn=s.fqdn("smtp"))


def autoconfig_xml(ctx: Context) -> str:
    return render("nginx/config-v1.1.xml.j2", **_clients(ctx))


def autodiscover_xml(ctx: Context) -> str:
    return render("nginx/autodiscover.xml.j2", **_clients(ctx))


def bundle(ctx: Context, host: H.Host) -> Bundle:
    if not host.runs(H.WEB):
        return Bundle()

    files = (
        File(SITE, site_conf(ctx)),
        File(f"{WEB_ROOT}/mta-sts.txt", dns.mta_sts_policy(ctx.settings)),
        File(f"{WEB_ROOT}/config-v1.1.xml", autoconfig_xml(ctx)),
        File(f"{WEB_ROOT}/autodiscover.xml", autodiscover_xml(ctx)),
    )
    return Bundle(files, render("nginx/deploy.sh.j2", site=SITE, web_root=WEB_ROOT))
