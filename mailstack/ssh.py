"""SSH on the servers, managed by the `host-<role>` step rather than by cloud-init alone,
so that what changes later reaches running servers without replacing them:

- the sshd policy: cloud-init/base/sshd.conf (keys only, as user-data writes it at first
  boot) plus cloud-init/ssh/forwarding.conf (no agent, TCP, X11 or tunnel forwarding);
- root's authorized_keys: exactly `admin.sshKeys` and the stack's deploy key, so a key
  removed from the settings is removed from the servers.

The deploy steps pin the host key they connect to (components/deploy.py, HOST_KEY_COMMAND).
"""

from __future__ import annotations

import shlex

from . import templates
from .bundle import Bundle, File
from .settings import Settings

SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-mailstack.conf"  # the file user-data writes
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
# Run once per server by Pulumi (components/deploy.py) to learn the key it then pins:
# after cloud-init, whose first boot creates the host keys, has finished.
HOST_KEY_COMMAND = f"cloud-init status --wait >/dev/null 2>&1; cat {HOST_KEY}"


def sshd_conf() -> str:
    return templates.read("base/sshd.conf").rstrip("\n") + "\n" + templates.read("ssh/forwarding.conf")


def authorized_keys(settings: Settings, deploy_key: str) -> str:
    lines = ["# Managed by mailstack (mailstack/ssh.py): admin.sshKeys and the deploy key."]
    lines += [k.strip() for k in settings.admin.ssh_keys]
    lines.append(deploy_key.strip())
    return "\n".join(dict.fromkeys(lines)) + "\n"


def host_key_line(command_output: str) -> str:
    """`ssh-ed25519 AAAA...` from HOST_KEY_COMMAND's output (type and key; no comment)."""
    fields = command_output.split()
    if len(fields) < 2 or not fields[0].startswith("ssh-"):
        raise ValueError(f"no SSH host key in {command_output!r}")
    return f"{fields[0]} {fields[1]}"


def bundle(settings: Settings, deploy_key: str) -> Bundle:
    files = [File(SSHD_DROPIN, sshd_conf())]
    if deploy_key:
        files.append(File(AUTHORIZED_KEYS, authorized_keys(settings, deploy_key), mode=0o600))
    script = templates.render(
        "ssh/deploy.sh.j2",
        dropin=SSHD_DROPIN,
        authorized_keys=AUTHORIZED_KEYS if deploy_key else "",
        deploy_key=shlex.quote(deploy_key.strip()),
    )
    return Bundle(tuple(files), script)
