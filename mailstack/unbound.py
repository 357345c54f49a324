"""unbound on every host: a local resolver on 127.0.0.1 for smtpd, rspamd and certbot."""

from __future__ import annotations

from . import hosts as H
from .bundle import Bundle, File
from .context import Context
from .templates import read, render

CONF = "/etc/unbound/unbound.conf.d/mailstack.conf"
DHCLIENT_HOOK = "/etc/dhcp/dhclient-enter-hooks.d/mailstack-resolver"


def unbound_conf(ctx: Context) -> str:
    return render("unbound/mailstack.conf.j2", forward_to=ctx.settings.resolver.forward_to)


def bundle(ctx: Context, host: H.Host) -> Bundle:
    files = (
        File(CONF, unbound_conf(ctx)),
        File(DHCLIENT_HOOK, read("unbound/dhclient-hook.sh")),
    )
    script = render("unbound/deploy.sh.j2", conf=CONF, dhclient_hook=DHCLIENT_HOOK)
    return Bundle(files, script)
