"""A stand-in for the Hetzner Storage Box: a real OpenSSH sshd serving SFTP only,
chrooted, for one unprivileged account (`nobody`), with key authentication only. Like a
Storage Box, the account's sessions start in its home directory, and the keys it accepts
are in `.ssh/authorized_keys` there, which the account itself may rewrite over SFTP
(the stack's `backup-keys` step does). The lab runs it on its own address on the lab's
outside network (so only the lab hosts reach it); tests/test_backup.py runs the same on a
loopback port.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

USER = "nobody"
HOME = "home"  # inside the chroot: the account's own, where sessions start
REPO_DIR = "backups"  # in HOME: the repositories of an sftp:// target


@dataclass(frozen=True)
class Storage:
    base: Path  # config, keys, logs (0755: sshd reads authorized_keys as USER)
    listen: str
    port: int

    @property
    def root(self) -> Path:  # the chroot: root-owned all the way up, as sshd insists
        return self.base / "root"

    @property
    def home(self) -> Path:
        return self.root / HOME

    @property
    def host_key(self) -> Path:
        return self.base / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    def target(self) -> str:
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"sftp://{USER}@{host}:{self.port}/{REPO_DIR}"

    def known_hosts_line(self) -> str:
        host = f"[{self.listen}]:{self.port}"
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"{host} {kind} {key}"

    def sshd_config(self) -> str:
        return (
            "\n".join(
                [
                    f"ListenAddress {self.listen}:{self.port}"
                    if ":" not in self.listen
                    else f"ListenAddress [{self.listen}]:{self.port}",
                    f"HostKey {self.host_key}",
                    "PidFile none",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin no",
                    f"AllowUsers {USER}",
                    f"ChrootDirectory {self.root}",
                    f"ForceCommand internal-sftp -d /{HOME}",
                    "Subsystem sftp internal-sftp",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    "X11Forwarding no",
                    "PermitTTY no",
                    "LogLevel VERBOSE",
                ]
            )
            + "\n"
        )


def prepare(st: Storage, public_keys: list[str], keep_host_key: Path | None = None) -> None:
    """Directories, host key (reused from keep_host_key if given), authorized_keys."""
    st.base.mkdir(parents=True, exist_ok=True)
    os.chmod(st.base, 0o755)
    st.root.mkdir(exist_ok=True)
    os.chmod(st.root, 0o755)
    for d in (st.home, st.home / ".ssh"):
        d.mkdir(exist_ok=True)
        os.chown(d, *_ids(USER))
        os.chmod(d, 0o700)
    if keep_host_key is not None and keep_host_key.exists():
        for suffix in ("", ".pub"):
            data = Path(f"{keep_host_key}{suffix}").read_bytes()
            p = Path(f"{st.host_key}{suffix}")
            p.write_bytes(data)
            os.chmod(p, 0o600 if not suffix else 0o644)
    if not st.host_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailstack-storage", "-f", str(st.host_key)],
            check=True,
        )
    st.authorized_keys.write_text("".join(k.strip() + "\n" for k in public_keys))
    os.chown(st.authorized_keys, *_ids(USER))
    os.chmod(st.authorized_keys, 0o600)
    (st.base / "sshd_config").write_text(st.sshd_config())
    # sshd's privilege separation directory (a packaged sshd's unit makes it).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(st.base / "sshd_config")], check=True)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def command(st: Storage) -> list[str]:
    return ["/usr/sbin/sshd", "-D", "-e", "-f", str(st.base / "sshd_config")]


def wait_listening(st: Storage, timeout: float = 10, netns: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmd = ["ssh-keyscan", "-T", "1", "-p", str(st.port), st.listen]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0 and "ssh-ed25519" in r.stdout:
            return
        time.sleep(0.2)
    raise TimeoutError(f"sshd on {st.listen}:{st.port} did not answer within {timeout:.0f}s")
