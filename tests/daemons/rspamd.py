"""Rspamd with mx1's rendered local.d in a Netns's server namespace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mailstack import rspamd

RSPAMD_PORT = 11333
CONTROLLER_PASSWORD = "test-controller-password"


def start(ns, ctx, root: Path, dkim: bool = False):
    """Rspamd with mx1's rendered local.d, in the server namespace (its own /run and
    /var/lib/rspamd), asking the namespace's unbound. dkim: with the stack's keys where
    the rendered dkim_signing.conf looks for them."""
    confdir = root / "rspamd"
    state = root / "rspamd-state"
    state.mkdir()
    for f in rspamd.bundle(ctx, ctx.hosts["mx1"]).files:
        if f.path.startswith(("/etc/rspamd/local.d/", "/etc/rspamd/override.d/")):
            p = confdir / Path(f.path).relative_to("/etc/rspamd")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f.content.replace("127.0.0.1:53", "127.0.0.53:53"))
        elif dkim and f.path.startswith(rspamd.KEY_DIR + "/"):
            p = state / Path(f.path).relative_to("/var/lib/rspamd")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f.content)
            shutil.chown(p, "root", "_rspamd")
            p.chmod(0o640)
    # What the services step writes from the stack's controller password (its hashing is
    # tested in tests/test_rspamd.py).
    pw_hash = (
        subprocess.run(
            ["rspamadm", "pw", "-e", "-p", CONTROLLER_PASSWORD], capture_output=True, text=True, check=True, timeout=60
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    (confdir / "local.d" / "worker-controller.inc").write_text(
        f'password = "{pw_hash}";\nenable_password = "{pw_hash}";\n'
    )
    if not dkim:  # signing is proven in tests/test_abuse.py and the lab
        (confdir / "local.d" / "dkim_signing.conf").unlink(missing_ok=True)
    (confdir / "local.d" / "logging.inc").write_text(
        f'type = "file";\nfilename = "{root}/rspamd.log";\nlevel = "warning";\n'
    )
    shutil.chown(root / "rspamd", "_rspamd", "_rspamd")
    shutil.chown(state, "_rspamd", "_rspamd")
    log = root / "rspamd.out"
    (root / "rspamd.log").touch()
    shutil.chown(root / "rspamd.log", "_rspamd", "_rspamd")
    script = (
        f"mkdir -p /run/rspamd && chown _rspamd /run/rspamd && "
        f"mount --bind {state} /var/lib/rspamd && "
        f"exec rspamd -f -u _rspamd -g _rspamd --var=LOCAL_CONFDIR={confdir}"
    )
    # A mount namespace of its own, so the bind over /var/lib/rspamd stays private.
    p = ns.start("unshare", "-m", "--propagation", "private", "sh", "-c", script, log=log)
    ns.wait_port("127.0.0.1", RSPAMD_PORT, p, log)
    return p
