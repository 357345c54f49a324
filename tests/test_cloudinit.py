"""cloud-init user-data: valid for the real cloud-init, small enough for Hetzner, free
of secrets and mail settings, and its scripts work when run for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mailstack import cloudinit, firewall, templates
from mailstack import hosts as H
from tests.conftest import ROOT, TEST_HASH, make_context, settings_from

ROLES_HA = ("mx1", "imap", "mx2")


def all_hosts():
    for topology in ("ha", "single"):
        s = settings_from(topology=topology)
        for h in H.hosts(s).values():
            yield topology, s, h


def _files(doc) -> dict[str, dict]:
    return {f["path"]: f for f in doc["write_files"]}


@pytest.mark.parametrize("topology,role", [("ha", r) for r in ROLES_HA] + [("single", "mx1")])
def test_real_cloud_init_accepts_the_schema(tmp_path, topology, role):
    s = settings_from(topology=topology)
    path = tmp_path / "user-data"
    path.write_text(cloudinit.user_data(s, H.hosts(s)[role]))
    out = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Valid cloud-config" in out.stdout


def test_fits_hetzner_limit_and_starts_with_cloud_config():
    for _, s, h in all_hosts():
        text = cloudinit.user_data(s, h)
        assert text.startswith("#cloud-config\n")
        assert len(text.encode()) < 32 * 1024, (h.role, len(text))


def test_no_secret_admin_or_mail_setting_in_user_data():
    for _, s, h in all_hosts():
        ctx = make_context(s)
        text = cloudinit.user_data(s, h)
        sec = ctx.secrets
        for secret in (sec.replication_password, sec.lookup_password, sec.rspamd_controller_password, TEST_HASH):
            assert secret not in text
        for pem in sec.dkim_keys.values():
            assert pem.splitlines()[1] not in text
        for key in s.admin.ssh_keys:
            assert key.split()[1] not in text
        for cidr in s.admin.ssh_cidrs:
            assert cidr not in text
        for u in s.users:
            assert u.address not in text
        assert "example.net" not in text  # a mail domain that is not the host domain
        assert s.acme.email not in text


def test_user_data_is_byte_identical_whatever_the_mail_settings():
    base = settings_from()
    other = settings_from(
        domains=["example.org", "example.com", "other.test"],
        users=[{"address": "zed@example.com"}, {"address": "amy@other.test", "quotaMb": 1}],
        aliases=[{"address": "postmaster@example.com", "to": ["zed@example.com"]}],
        admin={"sshKeys": [], "sshCidrs": ["192.0.2.0/24"]},
        acme={"email": "someone@else.test"},
        dmarc={"policy": "reject"},
    )
    assert base.host_domain == other.host_domain
    for role, h in H.hosts(base).items():
        assert cloudinit.user_data(base, h) == cloudinit.user_data(other, H.hosts(other)[role]), role


def test_host_names_do_change_user_data():
    a, b = settings_from(), settings_from(hostnames={"domain": "example.org", "mx1": "mail1"})
    assert cloudinit.user_data(a, H.hosts(a)["mx1"]) != cloudinit.user_data(b, H.hosts(b)["mx1"])


def test_packages_per_role():
    s = settings_from()
    hs = H.hosts(s)
    common = {
        "postgresql-15",
        "certbot",
        "unbound",
        "nftables",
        "unattended-upgrades",
        "nginx-light",
        "ca-certificates",
        "openssl",
    }
    mx = {
        "opensmtpd",
        "opensmtpd-extras",
        "opensmtpd-filter-rspamd",
        "opensmtpd-filter-senderscore",
        "rspamd",
        "redis-server",
    }
    imap = {"dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-pgsql", "dovecot-sieve", "dovecot-managesieved"}
    pkgs = {r: set(yaml.safe_load(cloudinit.user_data(s, h))["packages"]) for r, h in hs.items()}
    assert pkgs["mx1"] == common | mx
    assert pkgs["mx2"] == common | mx
    assert pkgs["imap"] == common | imap
    single = settings_from(topology="single")
    assert set(yaml.safe_load(cloudinit.user_data(single, H.hosts(single)["mx1"]))["packages"]) == common | mx | imap


def test_host_identity_and_files_written_before_packages():
    s = settings_from()
    for role, h in H.hosts(s).items():
        doc = yaml.safe_load(cloudinit.user_data(s, h))
        assert doc["locale"] == "C.UTF-8"
        assert (doc["hostname"], doc["fqdn"], doc["manage_etc_hosts"]) == (h.name, h.fqdn, True)
        assert doc["disable_root"] is False and doc["ssh_pwauth"] is False
        files = _files(doc)
        # write_files without defer runs in the init stage, before package installs.
        for path in (
            "/etc/mailname",
            "/etc/aliases",
            "/etc/apt/preferences.d/mailstack-opensmtpd",
            "/etc/apt/sources.list.d/mailstack-backports.list",
            "/etc/nftables.conf",
        ):
            assert not files[path].get("defer"), path
        assert files["/etc/mailname"]["content"] == f"{h.fqdn}\n"
        assert "root: postmaster@example.org\n" in files["/etc/aliases"]["content"]
        assert files["/etc/nftables.conf"]["content"] == firewall.nftables(s, h).strip() + "\n"
        sshd = files["/etc/ssh/sshd_config.d/00-mailstack.conf"]["content"]
        assert "PasswordAuthentication no" in sshd and "PermitRootLogin prohibit-password" in sshd
        assert files["/etc/nginx/sites-available/mailstack-acme"]["defer"] is True
        assert doc["runcmd"] == [["/usr/local/sbin/mailstack-base"]]
        env = files["/etc/mailstack/host.env"]["content"]
        assert f"MAILSTACK_FQDN={h.fqdn}\n" in env
        assert ("/usr/local/sbin/mailstack-vmail-volume" in files) == h.runs(H.IMAP)


def test_backports_pin_makes_apt_choose_opensmtpd_7_4(tmp_path):
    """Real apt: with our pin (and only it) the candidate is backports' 7.4."""
    s = settings_from()
    files = _files(yaml.safe_load(cloudinit.user_data(s, H.hosts(s)["mx1"])))
    assert "bookworm-backports main" in files["/etc/apt/sources.list.d/mailstack-backports.list"]["content"]
    parts = tmp_path / "preferences.d"
    parts.mkdir()
    (parts / "mailstack-opensmtpd").write_text(files["/etc/apt/preferences.d/mailstack-opensmtpd"]["content"])

    status = tmp_path / "status"  # as on a fresh server: nothing installed yet
    status.write_text("")

    def candidate(prefs_dir: Path) -> str:
        out = subprocess.run(
            [
                "apt-cache",
                "-o",
                f"Dir::State::status={status}",
                "-o",
                f"Dir::Etc::PreferencesParts={prefs_dir}",
                "-o",
                f"Dir::Etc::Preferences={tmp_path}/none",
                "policy",
                "opensmtpd",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return next(line.split()[1] for line in out.splitlines() if "Candidate:" in line)

    unpinned = candidate(tmp_path / "empty")
    if "bpo" not in subprocess.run(["apt-cache", "madison", "opensmtpd"], capture_output=True, text=True).stdout:
        pytest.skip("this machine's apt lists do not include bookworm-backports")
    assert not unpinned.startswith("7.4"), unpinned  # backports alone is never chosen
    assert candidate(parts).startswith("7.4"), "the pin does not select opensmtpd 7.4"


def test_scripts_pass_bash_syntax_check(tmp_path):
    for _, s, h in all_hosts():
        files = _files(yaml.safe_load(cloudinit.user_data(s, h)))
        for path, f in files.items():
            if f["content"].startswith("#!/bin/bash"):
                p = tmp_path / "script"
                p.write_text(f["content"])
                r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
                assert r.returncode == 0, (path, r.stderr)
        base = files["/usr/local/sbin/mailstack-base"]["content"]
        # The lab watches the console for DONE_LINE; say() prefixes "mailstack: ".
        assert 'say() { echo "mailstack: $*"; }' in base
        assert 'say "base install done for $MAILSTACK_FQDN"' in base
        assert cloudinit.DONE_LINE == "mailstack: base install done for"
        assert base.rstrip().endswith('say "base install done for $MAILSTACK_FQDN"')


def test_wait_step_program_is_valid_bash_and_checks_the_marker(ctx, tmp_path):
    program = cloudinit.wait_bundle(ctx).shell("wait-mx1")
    p = tmp_path / "wait.sh"
    p.write_text(program)
    assert subprocess.run(["bash", "-n", str(p)]).returncode == 0
    assert "cloud-init status --wait" in program
    assert cloudinit.MARKER in program
    assert "7.4*" in program


def test_tls_bootstrap_creates_a_self_signed_pair_once(tmp_path):
    from cryptography import x509

    s = settings_from()
    h = H.hosts(s)["mx1"]
    script = tmp_path / "bootstrap"
    script.write_text(
        _files(yaml.safe_load(cloudinit.user_data(s, h)))["/usr/local/sbin/mailstack-tls-bootstrap"]["content"]
    )
    d = tmp_path / "tls"
    subprocess.run(["bash", str(script), str(d)], check=True, capture_output=True)
    cert = x509.load_pem_x509_certificate((d / "fullchain.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx1.example.org", "smtp.example.org"]
    assert oct((d / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    assert oct((d / "fullchain.pem").stat().st_mode & 0o777) == "0o644"
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key((d / "privkey.pem").read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    before = (d / "fullchain.pem").read_bytes()
    subprocess.run(["bash", str(script), str(d)], check=True, capture_output=True)
    assert (d / "fullchain.pem").read_bytes() == before  # an existing pair is kept
    assert sorted(p.name for p in d.iterdir()) == ["fullchain.pem", "privkey.pem"]


def test_nginx_acme_site_serves_challenges_and_nothing_else(tmp_path):
    """Real nginx with the rendered site, in a private mount and network namespace: the
    site's /var/www/acme is an overlay, so the host's /var stays untouched."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare")
    site = tmp_path / "site.conf"
    site.write_text(templates.read("base/nginx-acme.conf"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"daemon on; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; include {site}; }}\n"
    )
    for d in ("up/www/acme/.well-known/acme-challenge", "work"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "up/www/acme/.well-known/acme-challenge/tok3n").write_text("tok3n.thumb")
    script = f"""
set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=/var,upperdir={tmp_path}/up,workdir={tmp_path}/work /var
ip link set lo up
nginx -t -q -c {conf}
nginx -c {conf}
trap 'nginx -c {conf} -s stop' EXIT
python3 - <<'PY'
import time, urllib.request, urllib.error
def get(path, host="mx1.example.org"):
    req = urllib.request.Request("http://127.0.0.1" + path, headers={{"Host": host}})
    for _ in range(50):
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            time.sleep(0.1)
print(get("/.well-known/acme-challenge/tok3n", "mta-sts.example.net"))
print(get("/.well-known/acme-challenge/missing"))
print(get("/"))
print(get("/index.html"))
PY
"""
    out = subprocess.run(
        ["unshare", "--mount", "--net", "bash", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["(200, 'tok3n.thumb')", "(404, '')", "(404, '')", "(404, '')"]


# ------------------------------------------------------------ scripts/hash-password

HASH_PASSWORD = ROOT / "scripts" / "hash-password"


def test_hash_password_output_verifies_with_crypt():
    import crypt  # deprecated, still in 3.11: an independent libxcrypt check

    from mailstack.settings import _SHA512_CRYPT_RE

    password = "  correct horse battery staple ü "
    out = subprocess.run([str(HASH_PASSWORD), "3"], input=password + "\n", capture_output=True, text=True, check=True)
    h = out.stdout.strip()
    assert out.stdout.count("\n") == 1  # stdout is the hash alone
    assert _SHA512_CRYPT_RE.match(h)
    assert crypt.crypt(password, h) == h
    assert crypt.crypt(password.strip(), h) != h
    assert f"--path 'mailstack:users[3].passwordHash' '{h}'" in out.stderr
    assert password.strip() not in out.stdout + out.stderr


def test_hash_password_refuses_empty_input():
    out = subprocess.run([str(HASH_PASSWORD)], input="\n", capture_output=True, text=True)
    assert out.returncode != 0 and out.stdout == ""


def test_vmail_volume_script_mounts_the_hetzner_volume_by_uuid(tmp_path):
    """The real script against a loop-device "volume" under the Hetzner by-id name, with
    /etc, /var and /dev overlaid in a private mount namespace (the machine stays as is)."""
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("unshare"):
        pytest.skip("needs root, losetup and unshare")
    script = tmp_path / "vmail-volume"
    script.write_text(templates.read("base/vmail-volume.sh"))
    img = tmp_path / "volume.img"
    with open(img, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    uuid = subprocess.run(
        ["blkid", "-s", "UUID", "-o", "value", str(img)], capture_output=True, text=True, check=True
    ).stdout.strip()
    for d in ("etc-up", "etc-w", "var-up", "var-w", "dev-up", "dev-w"):
        (tmp_path / d).mkdir()
    try:
        loop = subprocess.run(
            ["losetup", "--find", "--show", str(img)], capture_output=True, text=True, check=True
        ).stdout.strip()
    except subprocess.CalledProcessError:
        pytest.skip("no loop device available")
    try:
        inner = f"""
set -e
mount --make-rprivate /
for d in etc var dev; do
  mount -t overlay overlay -o lowerdir=/$d,upperdir={tmp_path}/$d-up,workdir={tmp_path}/$d-w /$d
done
groupadd --gid 5000 vmail && useradd --uid 5000 --gid 5000 -M -d /var/vmail vmail
mkdir -p /dev/disk/by-id && ln -s {loop} /dev/disk/by-id/scsi-0HC_Volume_4242
echo "UUID=stale /var/vmail ext4 defaults 0 2" >> /etc/fstab
bash {script}
echo "MOUNT $(findmnt -n -o SOURCE,FSTYPE /var/vmail)"
echo "OWNER $(stat -c '%u:%g %a' /var/vmail)"
grep /var/vmail /etc/fstab | sed 's/^/FSTAB /'
bash {script}
grep -c /var/vmail /etc/fstab | sed 's/^/COUNT /'
umount /var/vmail
"""
        out = subprocess.run(["unshare", "--mount", "bash", "-c", inner], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"MOUNT {loop} ext4" in lines
    assert "OWNER 5000:5000 750" in lines
    assert [line for line in lines if line.startswith("FSTAB ")] == [
        f"FSTAB UUID={uuid} /var/vmail ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2"
    ]
    assert "COUNT 1" in lines  # the rerun left fstab alone
    assert "mounted /dev/disk/by-id/scsi-0HC_Volume_4242" in out.stdout
