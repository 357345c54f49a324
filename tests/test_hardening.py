"""The host-<role> step (mailstack/hardening.py): the firewall's SSH limit applied in
place, the sshd policy checked by the real sshd, root's authorized_keys following the
settings, and the unattended-upgrades origins as the real apt parses them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mailstack import cloudinit, firewall, hardening, ssh, updates
from mailstack import hosts as H
from mailstack.settings import SettingsError
from tests.conftest import ed25519_openssh, make_context, settings_from
from tests.daemons.ports import free_port
from tests.test_firewall import _nft_check

DEPLOY_KEY = ed25519_openssh("deploy")[1]
ADMIN_A, ADMIN_B = ed25519_openssh("admin-a")[1], ed25519_openssh("admin-b")[1]


def test_ssh_limit_is_applied_by_the_step_and_never_changes_user_data():
    a = settings_from(admin={"sshCidrs": ["192.0.2.7/32"], "sshKeys": [ADMIN_A]})
    b = settings_from(admin={"sshCidrs": ["198.51.100.0/24", "2001:db8::/48"], "sshKeys": [ADMIN_B]})
    for role in H.ROLES:
        ha, hb = H.hosts(a)[role], H.hosts(b)[role]
        assert cloudinit.user_data(a, ha) == cloudinit.user_data(b, hb)
        ruleset = firewall.nftables(b, hb, ssh_limit=True)
        assert "ip saddr { 198.51.100.0/24 } tcp dport 22 accept" in ruleset
        assert "ip6 saddr { 2001:db8::/48 } tcp dport 22 accept" in ruleset
        # No other rule lets SSH in.
        assert [line for line in ruleset.splitlines() if "dport 22 " in line and "saddr" not in line] == []
        assert _nft_check(ruleset).returncode == 0
        step = hardening.bundle(make_context(b), hb)
        assert step.file(firewall.NFTABLES_CONF).content == ruleset
        assert "nft -c -f" in step.script and "nft -f /etc/nftables.conf" in step.script


def _sshd_effective(tmp_path: Path) -> dict[str, str]:
    """`sshd -T` of Debian's sshd_config with our drop-in in front, as on a server."""
    dropin = tmp_path / "00-mailstack.conf"
    dropin.write_text(ssh.sshd_conf())
    main = tmp_path / "sshd_config"
    main.write_text(
        Path("/etc/ssh/sshd_config").read_text().replace("Include /etc/ssh/sshd_config.d/*.conf", f"Include {dropin}")
    )
    subprocess.run(["sshd", "-t", "-f", main], check=True, capture_output=True, timeout=30)
    out = subprocess.run(
        ["sshd", "-T", "-f", main, "-C", "user=root,host=x,addr=192.0.2.1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_sshd_refuses_forwarding_and_passwords(tmp_path):
    eff = _sshd_effective(tmp_path)
    for key in (
        "allowagentforwarding",
        "allowtcpforwarding",
        "allowstreamlocalforwarding",
        "x11forwarding",
        "permittunnel",
        "passwordauthentication",
        "kbdinteractiveauthentication",
    ):
        assert eff[key] == "no", (key, eff[key])
    assert eff["permitrootlogin"] == "without-password"
    # The step keeps user-data's drop-in path, so the first-boot file is replaced, not doubled.
    assert ssh.SSHD_DROPIN in cloudinit.user_data(settings_from(), H.hosts(settings_from())["mx1"])


def test_authorized_keys_are_exactly_the_settings_and_the_deploy_key():
    s = settings_from(admin={"sshCidrs": ["192.0.2.7/32"], "sshKeys": [ADMIN_A, ADMIN_B]})
    removed = settings_from(admin={"sshCidrs": ["192.0.2.7/32"], "sshKeys": [ADMIN_B]})
    keys = [k for k in ssh.authorized_keys(removed, DEPLOY_KEY).splitlines() if not k.startswith("#")]
    assert keys == [ADMIN_B, DEPLOY_KEY]
    assert ADMIN_A in ssh.authorized_keys(s, DEPLOY_KEY)
    b = ssh.bundle(removed, DEPLOY_KEY)
    f = b.file(ssh.AUTHORIZED_KEYS)
    assert (f.owner, f.mode) == ("root", 0o600)
    # The script refuses a file that would lock the deploy out.
    assert f"grep -qxF '{DEPLOY_KEY}'" in b.script
    # Without a deploy key (the lab) the file is left alone.
    assert ssh.AUTHORIZED_KEYS not in [x.path for x in ssh.bundle(removed, "").files]


def _apt_dump(conf_text: str, tmp_path: Path) -> str:
    conf = tmp_path / "51mailstack-unattended-upgrades"
    conf.write_text(conf_text)
    # Debian's own default list first, as on a server, so #clear is put to the test.
    default = tmp_path / "50unattended-upgrades"
    default.write_text(
        'Unattended-Upgrade::Origins-Pattern { "origin=Debian,codename=${distro_codename}-updates"; };\n'
    )
    both = tmp_path / "apt.conf"
    both.write_text(default.read_text() + conf.read_text())
    return subprocess.run(
        ["apt-config", "-c", both, "dump", "Unattended-Upgrade"], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def _release_fields() -> list[dict[str, str]]:
    out = []
    for f in Path("/var/lib/apt/lists").glob("*InRelease"):
        fields = dict(re.findall(r"^(Origin|Label|Codename): (.+)$", f.read_text(errors="replace"), re.M))
        if fields:
            out.append(fields)
    return out


def test_unattended_upgrades_origins_as_apt_reads_them(tmp_path):
    dump = _apt_dump(updates.apt_conf(settings_from(updates={"rebootTime": "03:45"})), tmp_path)
    patterns = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump, re.M)
    assert patterns == [f"origin={o},codename={c},label={lab}" for o, c, lab in updates.ORIGINS]
    assert 'Unattended-Upgrade::Automatic-Reboot "true";' in dump
    assert 'Unattended-Upgrade::Automatic-Reboot-Time "03:45";' in dump
    # Each pattern names a real archive of this Debian 12 machine's apt lists.
    releases = _release_fields()
    if not any(r.get("Codename") == "bookworm-backports" for r in releases):
        pytest.skip("this machine's apt lists do not include bookworm-backports")
    for p in patterns:
        want = dict(kv.split("=", 1) for kv in p.replace("${distro_codename}", "bookworm").split(","))
        assert any(
            r.get("Origin") == want["origin"]
            and r.get("Codename") == want["codename"]
            and r.get("Label") == want["label"]
            for r in releases
        ), p


def test_reboot_time_is_validated():
    with pytest.raises(SettingsError, match=r"updates\.rebootTime: '25:00'.*HH:MM"):
        settings_from(updates={"rebootTime": "25:00"})
    assert 'Automatic-Reboot "false"' in updates.apt_conf(settings_from(updates={"reboot": False}))


def test_a_key_removed_from_the_settings_no_longer_logs_in(tmp_path):
    """The real sshd with the rendered authorized_keys and our sshd policy: the admin
    key still in the settings logs in, the removed one is refused."""
    import socket
    import time

    priv_a, pub_a = ed25519_openssh("admin-a")
    priv_b, pub_b = ed25519_openssh("admin-b")
    removed = settings_from(admin={"sshCidrs": ["192.0.2.7/32"], "sshKeys": [pub_b]})
    auth = tmp_path / "authorized_keys"
    auth.write_text(ssh.authorized_keys(removed, DEPLOY_KEY))
    auth.chmod(0o600)
    port = free_port()
    hk = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hk], check=True)
    conf = tmp_path / "sshd_config"
    conf.write_text(
        ssh.sshd_conf()
        + "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {hk}",
                "PidFile none",
                f"AuthorizedKeysFile {auth}",
                "AllowUsers root",
                "UsePAM no",
                # StrictModes would refuse a key file under /tmp (world-writable); on the servers
                # the file is /root/.ssh/authorized_keys.
                "ForceCommand /bin/true",
                "StrictModes no",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)

        def login(priv: str) -> int:
            key = tmp_path / "id"
            key.write_text(priv)
            key.chmod(0o600)
            return subprocess.run(
                [
                    "ssh",
                    "-F",
                    "/dev/null",
                    "-i",
                    key,
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-p",
                    str(port),
                    "root@127.0.0.1",
                    "true",
                ],
                capture_output=True,
                timeout=30,
            ).returncode

        assert login(priv_b) == 0
        assert login(priv_a) == 255  # Permission denied (publickey)
    finally:
        proc.terminate()
        proc.wait(10)
