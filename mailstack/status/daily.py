"""The daily job on the primary host (`mailstack-status.timer`): run the host's status
program, judge it, and mail the postmaster only what changed since the last run.
Standard library only: it runs under the server's python3 from /usr/local/lib."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from . import hostchecks, model


def report(conf: dict, previous: list[model.Check] | None, current: list[model.Check]) -> EmailMessage | None:
    """The mail for the postmaster, or None when nothing changed."""
    lines = model.changes(previous, current)
    if not lines:
        return None
    n = {s: sum(c.status == s for c in current) for s in (model.ERROR, model.WARN)}
    msg = EmailMessage()
    msg["From"] = conf["mail_from"]
    msg["To"] = conf["mail_to"]
    msg["Subject"] = (
        f"mailstack status on {conf['host']}: {n[model.ERROR]} error, {n[model.WARN]} warn ({len(lines)} changed)"
    )
    msg.set_content(
        "Changed since the last daily run:\n\n" + "\n".join(lines) + "\n\n"
        "Only this host's inside view; `make status` on your machine checks "
        "everything.\n"
    )
    return msg


def main(argv: list[str]) -> int:
    conf = json.loads(Path(argv[0]).read_text())
    collect = Path(__file__).with_name("collect.py")
    r = subprocess.run([sys.executable, str(collect), conf["params_file"]], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        checks = hostchecks.unreachable(conf["role"], f"status program failed: {r.stderr.strip()[-200:]}")
    else:
        params = json.loads(Path(conf["params_file"]).read_text())
        data = json.loads(r.stdout.strip().splitlines()[-1])
        checks = hostchecks.checks(params, data, conf["published_dkim"])
    state = Path(conf["state_file"])
    previous = model.from_json(state.read_text()) if state.exists() else None
    msg = report(conf, previous, checks)
    if msg is not None:
        subprocess.run(["/usr/sbin/sendmail", "-t", "-i"], input=msg.as_bytes(), check=True, timeout=120)
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_suffix(".tmp")
    tmp.write_text(model.to_json(checks))
    os.replace(tmp, state)
    print(f"{len(checks)} checks, exit {model.exit_code(checks)}, {'mailed the changes' if msg else 'nothing changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
