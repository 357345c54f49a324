"""The `host-<role>` step: what every host gets, whatever it runs, and may change without
replacing the server: the host firewall with the SSH limit, the SSH policy and keys, and
unattended upgrades (docs/hardening.md)."""

from __future__ import annotations

from . import firewall, ssh, updates
from . import hosts as H
from .bundle import Bundle
from .context import Context


def bundle(ctx: Context, host: H.Host) -> Bundle:
    s = ctx.settings
    return firewall.bundle(s, host) + ssh.bundle(s, ctx.secrets.deploy_public_key) + updates.bundle(s)
