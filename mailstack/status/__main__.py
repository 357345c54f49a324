"""`python -m mailstack.status [--stack NAME] [--json]`: check the deployed stack.

Expectations come from the stack config (`pulumi config --json`) rendered by the same
code as the deploy, and the stack outputs (`pulumi stack output --json`: addresses,
name servers, the DKIM public keys in `dnsRecords`). The inside checks run each host's
status program as root over SSH, exactly like the deploy steps (deploy.RUN_PROGRAM),
with the operator's own SSH key (mailstack:admin.sshKeys)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from typing import cast

from .. import dkim, dns
from .. import hosts as H
from ..deploy import RUN_PROGRAM
from ..settings import SettingsError, load_settings, with_clock
from . import cli, decide
from .expect import Environment

SSH_TIMEOUT = 300


def _pulumi(args: list[str], stack: str | None) -> dict:
    cmd = ["pulumi", *args, "--json", *(["--stack", stack] if stack else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout)


def environment(config: dict, outputs: dict) -> Environment:
    """Pure: `pulumi config --json` + `pulumi stack output --json` -> Environment."""
    values = {k: v.get("value") if isinstance(v, dict) else v for k, v in config.items()}
    secret_keys = {k for k, v in config.items() if isinstance(v, dict) and v.get("secret")}
    settings = load_settings({k: v for k, v in values.items() if k.startswith("mailstack:")}, secret_keys)
    addresses = {r: H.Address(a["ipv4"], a["ipv6"]) for r, a in outputs["addresses"].items()}
    # The DKIM schedule's phase as the last `pulumi up` deployed it (mailstack/dkim.py):
    # the records of every published generation are expected, the signing one's key on mx1.
    deployed = (outputs.get("dkimSchedule") or {}).get("now")
    settings = with_clock(
        settings, datetime.datetime.fromisoformat(deployed) if deployed else datetime.datetime.now(datetime.UTC)
    )
    keys = dkim.plan(settings)
    published: dict[str, dict[str, str]] = {}
    for rec in outputs.get("dnsRecords", []):
        for selector in keys.selectors:
            if rec["type"] == "TXT" and rec["name"].startswith(f"{selector}._domainkey"):
                domain = (
                    rec["zone"]
                    if rec["name"] == f"{selector}._domainkey"
                    else rec["name"].removeprefix(f"{selector}._domainkey.") + "." + rec["zone"]
                )
                # A record without p= is kept as None; the expectations then differ from it.
                published.setdefault(selector, {})[domain] = cast(str, decide.dkim_p(dns.txt_text(rec["values"][0])))
    dkim_public = published.pop(keys.signing.selector, {})
    nameservers = outputs.get("nameservers") or {}
    if not settings.dns.manage_zone or not nameservers:
        nameservers = {z: [] for z in dns.zones(settings)}

    def run_on(role: str, program: str) -> str:
        r = subprocess.run(
            ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", f"root@{addresses[role].ipv4}", RUN_PROGRAM],
            input=program,
            capture_output=True,
            text=True,
            timeout=SSH_TIMEOUT,
        )
        if r.returncode != 0:
            raise RuntimeError(f"ssh to {role} failed (exit {r.returncode}): {r.stderr.strip()[-200:]}")
        return r.stdout

    return Environment(settings, addresses, dkim_public, nameservers, run_on, dkim_published=published)


def main(argv: list[str]) -> int:
    p = cli.parser("python -m mailstack.status")
    p.add_argument("--stack", help="Pulumi stack (default: the selected one)")
    a = p.parse_args(argv)
    try:
        # --show-secrets stays in this process: settings validation needs the whole
        # config; nothing secret is printed or passed on.
        config = _pulumi(["config", "--show-secrets"], a.stack)
        outputs = _pulumi(["stack", "output"], a.stack)
        env = environment(config, outputs)
    except (RuntimeError, OSError, SettingsError, KeyError, ValueError) as exc:
        return cli.fail(str(exc))
    return cli.report(env, a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
