"""What the lab proves: each scenario drives real mail through the real hosts from the
lab's internet and checks where it lands. Every one returns pass/fail with a message;
run_all() runs them in order and table() prints the summary.

One module per group of scenarios; the list below is their order in a run."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from ..util import log
from .abuse import s_brute_force
from .backup import s_backup_restore
from .dkim_rotation import s_dkim_rotation
from .faults import s_faults, s_faults_hosts
from .forwarding import s_forwarding
from .hardening import s_tls_profile, s_updates
from .hosts import s_firewall, s_reboot, s_redeploy
from .learning import s_learning
from .mailflow import s_inbound, s_no_open_relay, s_sieve, s_spam, s_submission
from .recursion import s_recursion
from .redundancy import s_backup_mx, s_replication
from .renewal import s_renewal
from .resilience import s_hostile_input, s_supervision
from .status import s_status

SCENARIOS = [
    ("inbound", s_inbound),
    ("submission", s_submission),
    ("no-open-relay", s_no_open_relay),
    ("backup-mx", s_backup_mx),
    ("replication", s_replication),
    ("spam", s_spam),
    ("recursion", s_recursion),
    ("learning", s_learning),
    ("sieve", s_sieve),
    ("forwarding", s_forwarding),
    ("dkim-rotation", s_dkim_rotation),
    ("firewall", s_firewall),
    ("hostile-input", s_hostile_input),
    ("tls-profile", s_tls_profile),
    ("renewal", s_renewal),
    ("updates", s_updates),
    ("brute-force", s_brute_force),
    # status judges a lab whose daemons have not been killed yet (restart counts warn).
    ("status", s_status),
    ("supervision", s_supervision),
    ("faults", s_faults),
    ("faults-hosts", s_faults_hosts),
    ("redeploy", s_redeploy),
    ("reboot", s_reboot),
    ("backup-restore", s_backup_restore),
]
# Left out of `make test` (pytest marker `lab_slow`) to keep it well under 30 minutes;
# `make lab` and `make test-slow` run them (README, "Tests").
SLOW = {"faults-hosts"}


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    message: str

    @property
    def skipped(self) -> bool:
        return self.ok and self.message.startswith("skipped")

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.ok else "FAIL"


def run_one(name: str) -> Result:
    fn = dict(SCENARIOS)[name]
    t = time.monotonic()
    log(f"scenario {name}: {fn.__doc__.strip().splitlines()[0]}")
    try:
        msg = fn()
        ok = True
    except Exception as exc:
        ok = False
        msg = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    r = Result(name, ok, time.monotonic() - t, msg)
    log(f"scenario {name}: {r.verdict} ({r.seconds:.1f}s) {msg}")
    return r


def run_all(only: list[str] | None = None) -> list[Result]:
    return [run_one(n) for n, _ in SCENARIOS if not only or n in only]


def table(results: list[Result]) -> str:
    lines = ["", f"{'scenario':<15} {'result':<6} {'seconds':>7}  detail"]
    for r in results:
        lines.append(f"{r.name:<15} {r.verdict:<6} {r.seconds:7.1f}  {r.message[:200]}")
    passed = sum(r.ok and not r.skipped for r in results)
    skipped = sum(r.skipped for r in results)
    lines.append(
        f"{passed}/{len(results) - skipped} scenarios passed"
        + (f" ({skipped} skipped for this topology)" if skipped else "")
    )
    return "\n".join(lines)
