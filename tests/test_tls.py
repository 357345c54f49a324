"""TLS: certificate names per host, the certificates step, and the deploy hook; then the
whole step program run for real against Pebble (a local ACME server)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cryptography import x509

from mailstack import hosts as H
from mailstack import tls
from tests.conftest import make_context, settings_from
from tests.daemons.certs import ec_pair

WEB_NAMES = [
    "mta-sts.example.org",
    "autoconfig.example.org",
    "autodiscover.example.org",
    "mta-sts.example.net",
    "autoconfig.example.net",
    "autodiscover.example.net",
]


def test_certificate_names_ha(settings):
    hs = H.hosts(settings)
    assert tls.certificate_names(settings, hs["mx1"]) == ["mx1.example.org", "smtp.example.org", *WEB_NAMES]
    assert tls.certificate_names(settings, hs["imap"]) == ["imap.example.org"]
    assert tls.certificate_names(settings, hs["mx2"]) == ["mx2.example.org"]


def test_certificate_names_single(single_settings):
    mx1 = H.hosts(single_settings)["mx1"]
    assert tls.certificate_names(single_settings, mx1) == [
        "mx1.example.org",
        "smtp.example.org",
        "imap.example.org",
        *WEB_NAMES,
    ]


def test_smtp_name_equal_to_mx1_is_not_listed_twice():
    s = settings_from(hostnames={"domain": "example.org", "smtp": "mx1"})
    assert tls.certificate_names(s, H.hosts(s)["mx1"])[:2] == ["mx1.example.org", "mta-sts.example.org"]


def test_adding_a_domain_only_appends_names(settings):
    more = settings_from(domains=["example.org", "example.net", "example.com"])
    old = tls.certificate_names(settings, H.hosts(settings)["mx1"])
    new = tls.certificate_names(more, H.hosts(more)["mx1"])
    assert new[: len(old)] == old
    assert new[len(old) :] == ["mta-sts.example.com", "autoconfig.example.com", "autodiscover.example.com"]


def test_certbot_command_uses_settings(settings):
    s = settings_from(acme={"email": "ca@example.org", "directory": "https://acme.test/dir", "caaIssuer": "acme.test"})
    cmd = tls.certbot_command(s, H.hosts(s)["imap"])
    assert cmd[:2] == ["certbot", "certonly"]
    for flag, value in (
        ("--server", "https://acme.test/dir"),
        ("--email", "ca@example.org"),
        ("--cert-name", "mailstack"),
        ("-w", "/var/www/acme"),
    ):
        assert cmd[cmd.index(flag) + 1] == value
    for flag in ("--non-interactive", "--agree-tos", "--webroot", "--expand"):
        assert flag in cmd
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "-d"] == ["imap.example.org"]


def test_bundle_installs_the_hook_and_calls_certbot(ctx, tmp_path):
    b = tls.certificates_bundle(ctx, ctx.hosts["mx2"])
    hook = b.file(tls.DEPLOY_HOOK)
    assert hook.mode == 0o755 and not hook.secret
    assert "--server https://acme-v02.api.letsencrypt.org/directory" in b.script
    assert "-d mx2.example.org" in b.script
    program = tmp_path / "step.sh"
    program.write_text(b.shell("certificates-mx2"))
    assert subprocess.run(["bash", "-n", str(program)]).returncode == 0
    (tmp_path / "hook").write_text(hook.content)
    assert subprocess.run(["bash", "-n", str(tmp_path / "hook")]).returncode == 0


def test_deploy_hook_copies_once_with_modes(tmp_path):
    live = tmp_path / "live" / "mailstack"
    ec_pair(live, "mx1.example.org", san=True)
    hook = tmp_path / "hook"
    hook.write_text(tls.deploy_hook())
    env = dict(os.environ, RENEWED_LINEAGE=str(live), MAILSTACK_TLS_DIR=str(tmp_path / "tls"))
    first = subprocess.run(["bash", str(hook)], env=env, capture_output=True, text=True, check=True)
    assert "installed the certificate" in first.stderr
    dst = tmp_path / "tls"
    assert (dst / "fullchain.pem").read_bytes() == (live / "fullchain.pem").read_bytes()
    assert (dst / "privkey.pem").stat().st_mode & 0o777 == 0o600
    assert (dst / "fullchain.pem").stat().st_mode & 0o777 == 0o644
    again = subprocess.run(["bash", str(hook)], env=env, capture_output=True, text=True, check=True)
    assert again.stderr == ""  # unchanged: nothing copied, nothing restarted
    other = dict(env, RENEWED_LINEAGE=str(tmp_path / "live" / "other"))
    ec_pair(tmp_path / "live" / "other", "other.test", san=True)
    subprocess.run(["bash", str(hook)], env=other, check=True)
    assert (dst / "fullchain.pem").read_bytes() == (live / "fullchain.pem").read_bytes()


# --------------------------------------------------------------------------- Pebble


def _run_step(tmp_path: Path, program: str, ca: Path) -> subprocess.CompletedProcess:
    """The step's own program, as root, with /etc and /var overlaid on temp dirs so its
    writes (certbot state, webroot, /etc/mailstack/tls) never touch this machine."""
    for d in ("etc-up", "etc-work", "var-up", "var-work"):
        (tmp_path / d).mkdir(exist_ok=True)
    wrapper = (
        "set -e; mount --make-rprivate /; "
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/etc-up,workdir={tmp_path}/etc-work /etc; "
        f"mount -t overlay overlay -o lowerdir=/var,upperdir={tmp_path}/var-up,workdir={tmp_path}/var-work /var; "
        f"exec bash -s < {tmp_path}/step.sh"
    )
    (tmp_path / "step.sh").write_text(program)
    return subprocess.run(
        ["unshare", "--mount", "bash", "-c", wrapper],
        capture_output=True,
        text=True,
        env=dict(os.environ, REQUESTS_CA_BUNDLE=str(ca)),
        timeout=120,
    )


def _sans(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_certificates_step_against_pebble(tmp_path, pebble):
    directory, ca = pebble
    acme = {"email": "hostmaster@example.org", "directory": directory, "caaIssuer": "pebble.invalid"}
    s = settings_from(acme=acme)
    ctx = make_context(s)
    mx1 = ctx.hosts["mx1"]
    tls_dir = tmp_path / "etc-up" / "mailstack" / "tls"

    first = _run_step(tmp_path, tls.certificates_bundle(ctx, mx1).shell("certificates-mx1"), ca)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(_sans(tls_dir / "fullchain.pem")) == sorted(tls.certificate_names(s, mx1))
    assert (tls_dir / "privkey.pem").stat().st_mode & 0o777 == 0o600
    hook = tmp_path / "etc-up" / "letsencrypt" / "renewal-hooks" / "deploy" / "mailstack"
    assert hook.stat().st_mode & 0o777 == 0o755
    issued = (tls_dir / "fullchain.pem").read_bytes()

    again = _run_step(tmp_path, tls.certificates_bundle(ctx, mx1).shell("certificates-mx1"), ca)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not yet due for renewal" in again.stderr
    assert (tls_dir / "fullchain.pem").read_bytes() == issued
    assert "installed the certificate" not in again.stderr

    # A new mail domain extends the same lineage in place.
    more = make_context(settings_from(acme=acme, domains=["example.org", "example.net", "example.com"]))
    grown = _run_step(tmp_path, tls.certificates_bundle(more, more.hosts["mx1"]).shell("certificates-mx1"), ca)
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "mta-sts.example.com" in _sans(tls_dir / "fullchain.pem")
    assert len(list((tmp_path / "etc-up" / "letsencrypt" / "live").iterdir())) == 2  # mailstack + README
