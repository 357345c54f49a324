"""Supervision: every daemon a host runs has a restart policy that brings it back after
any exit, clean ones included (smtpd exits with status 0 when it loses a filter). The
lab's `supervision` scenario kills and stops each one on the real units."""

from __future__ import annotations

import configparser

import pytest

from mailstack import postgresql, services, smtpd, supervision
from tests.conftest import make_context, settings_from

EXPECTED = {
    ("ha", "mx1"): {"opensmtpd", "rspamd", "redis-server", "unbound", "nginx", "postgresql@15-main", "fail2ban"},
    ("ha", "imap"): {"dovecot", "unbound", "nginx", "postgresql@15-main", "fail2ban"},
    ("ha", "mx2"): {"opensmtpd", "rspamd", "redis-server", "unbound", "nginx", "postgresql@15-main"},
    ("single", "mx1"): {
        "opensmtpd",
        "rspamd",
        "redis-server",
        "dovecot",
        "unbound",
        "nginx",
        "postgresql@15-main",
        "fail2ban",
    },
}


@pytest.mark.parametrize("topology,role", sorted(EXPECTED))
def test_every_daemon_of_a_host_is_supervised(topology, role):
    ctx = make_context(settings_from(topology=topology))
    host = ctx.hosts[role]
    units = supervision.units(host)
    assert {u.removesuffix(".service") for u in units} == EXPECTED[(topology, role)]
    b = services.bundle(ctx, host)
    for u in units:
        unit = configparser.ConfigParser()
        unit.read_string(b.file(supervision.dropin_path(u)).content)
        # Restart=always: on-failure ignores a clean exit, which is how smtpd left.
        assert unit["Service"]["Restart"] == "always"
        assert int(unit["Service"]["RestartSec"]) <= 5
        # ...and no packaged RestartPreventExitStatus (fail2ban: "0 255") may keep it down.
        assert unit["Service"]["RestartPreventExitStatus"] == ""
        # Bounded, so a daemon that can't start ends up failed rather than looping.
        assert int(unit["Unit"]["StartLimitBurst"]) >= 5
        assert int(unit["Unit"]["StartLimitIntervalSec"]) > 0
        assert f"install_file {supervision.dropin_path(u)}" in b.script
        # Dovecot's children finish their deliveries when the master dies (no redelivery
        # of a stored message); everything else keeps systemd's default.
        want = "process" if u == "dovecot.service" else None
        assert unit["Service"].get("KillMode") == want


def test_supervision_comes_before_the_daemons_and_reloads_only_on_change(ctx):
    b = services.bundle(ctx, ctx.hosts["mx1"])
    first = b.script.index("install_file " + supervision.dropin_path(postgresql.PG_UNIT))
    assert first < b.script.index("# --- OpenSMTPD")
    part = supervision.bundle(ctx.hosts["mx1"]).script
    assert 'if [ -n "$SUPERVISION_CHANGED" ]; then\n  systemctl daemon-reload' in part
    # The smtpd unit's own drop-in keeps ordering only; the policy has one home.
    assert "Restart" not in smtpd.bundle(ctx, ctx.hosts["mx1"]).file(smtpd.UNIT_DROPIN).content
