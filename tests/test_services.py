"""The services-<role> bundle: which parts each host gets, in which order, and that
every part validates before it installs and keeps secrets out of the script."""

from __future__ import annotations

import re
import subprocess

import pytest

from mailstack import deploy, nginx, rspamd, services, smtpd, unbound
from tests.conftest import make_context, settings_from

VALIDATORS = {
    "unbound": ("unbound-checkconf", "install_all /etc/unbound"),
    "rspamd": ("configtest", "install_all /etc/rspamd/local.d"),
    "smtpd": ("smtpd -n", "install_all /etc/smtpd"),
    "nginx": ("nginx -q -t", f"install_file {nginx.SITE}"),
}


def all_hosts():
    for topology in ("ha", "single"):
        ctx = make_context(settings_from(topology=topology))
        for role in ctx.hosts:
            yield pytest.param(ctx, role, id=f"{topology}-{role}")


@pytest.mark.parametrize("ctx_,role", all_hosts())
def test_bundle_is_valid_bash_and_validates_before_installing(ctx_, role):
    b = services.bundle(ctx_, ctx_.hosts[role])
    program = b.shell(f"services-{role}")
    r = subprocess.run(["bash", "-n"], input=program, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name, (check, install) in VALIDATORS.items():
        if install in b.script:
            assert b.script.index(check) < b.script.index(install), name


@pytest.mark.parametrize("ctx_,role", all_hosts())
def test_no_secret_outside_secret_files(ctx_, role):
    b = services.bundle(ctx_, ctx_.hosts[role])
    s = ctx_.secrets
    secrets = [s.lookup_password, s.rspamd_controller_password, s.replication_password, *s.dkim_keys.values()]
    for secret in secrets:
        assert secret not in b.script
        for f in b.files:
            if secret in f.content:
                assert f.secret and f.mode & 0o007 == 0, f.path


def test_parts_per_host(ctx, single_ctx):
    paths = {r: {f.path for f in services.bundle(ctx, h).files} for r, h in ctx.hosts.items()}
    for role in ("mx1", "imap", "mx2"):
        assert unbound.CONF in paths[role]
    assert smtpd.SMTPD_CONF in paths["mx1"] and smtpd.SMTPD_CONF in paths["mx2"]
    assert smtpd.SMTPD_CONF not in paths["imap"]
    assert nginx.SITE in paths["mx1"] and nginx.SITE not in paths["mx2"] | paths["imap"]
    assert f"{rspamd.LOCAL_D}/dkim_signing.conf" in paths["mx1"]
    assert f"{rspamd.LOCAL_D}/dkim_signing.conf" not in paths["mx2"]
    single = {f.path for f in services.bundle(single_ctx, single_ctx.hosts["mx1"]).files}
    assert {smtpd.SMTPD_CONF, nginx.SITE, unbound.CONF, f"{rspamd.LOCAL_D}/redis.conf"} <= single
    assert smtpd.FLUSH_TIMER not in single


def test_resolver_then_rspamd_then_smtpd(ctx):
    script = services.bundle(ctx, ctx.hosts["mx1"]).script
    marks = [script.index(m) for m in ("# --- unbound", "# --- Rspamd", "# --- OpenSMTPD", "# --- nginx")]
    assert marks == sorted(marks)


def test_plan_uses_services_bundle(settings):
    steps = {s.name: s for s in deploy.plan(settings)}
    ctx = make_context(settings)
    for role in ctx.hosts:
        got = steps[f"services-{role}"].render(ctx)
        assert got.digest() == services.bundle(ctx, ctx.hosts[role]).digest()


def test_mail_changes_do_not_touch_daemon_configs_except_lists_of_domains():
    """Users and aliases live in PostgreSQL only: no file of the services step changes."""
    a = make_context(settings_from())
    b = make_context(
        settings_from(
            users=[{"address": "alice@example.org"}],
            aliases=[{"address": "postmaster@example.org", "to": ["alice@example.org"]}],
        )
    )
    for role in a.hosts:
        fa = {f.path: f.content for f in services.bundle(a, a.hosts[role]).files}
        fb = {f.path: f.content for f in services.bundle(b, b.hosts[role]).files}
        fa = {k: v for k, v in fa.items() if not re.search(r"dovecot|sieve", k)}
        fb = {k: v for k, v in fb.items() if not re.search(r"dovecot|sieve", k)}
        assert fa == fb, role
