"""One check's result, the exit code, and the text/JSON output."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

OK, WARN, ERROR = "ok", "warn", "error"
_RANK = {OK: 0, WARN: 1, ERROR: 2}
# Output order of the areas (the engine may produce them in any order).
AREAS = (
    "dns",
    "delegation",
    "rdns",
    "mta-sts",
    "ports",
    "tls",
    "smtp",
    "dnsbl",
    "services",
    "replication",
    "queue",
    "disk",
    "backup",
    "updates",
    "outbound",
    "dkim",
)


@dataclass(frozen=True)
class Check:
    area: str
    name: str  # what was checked, e.g. "mx1 v4" or "_dmarc.example.org TXT"
    status: str  # ok | warn | error
    expected: str
    found: str

    @property
    def id(self) -> str:
        return f"{self.area}: {self.name}"


def worst(*statuses: str) -> str:
    return max(statuses, key=_RANK.__getitem__, default=OK)


def exit_code(checks: list[Check]) -> int:
    """0 all ok, 1 any error, 2 warnings only."""
    w = worst(*(c.status for c in checks))
    return {OK: 0, ERROR: 1, WARN: 2}[w]


def _ordered(checks: list[Check]) -> list[Check]:
    rank = {a: i for i, a in enumerate(AREAS)}
    return sorted(checks, key=lambda c: (rank.get(c.area, len(AREAS)), c.area))


def text(checks: list[Check], verbose: bool = True) -> str:
    lines, area = [], None
    for c in _ordered(checks):
        if c.area != area:
            area = c.area
            lines.append(f"[{area}]")
        line = f"  {c.status:<5} {c.name}"
        if c.status != OK or verbose:
            line += f": expected {_short(c.expected)}; found {_short(c.found)}"
        lines.append(line)
    n = {s: sum(c.status == s for c in checks) for s in (OK, WARN, ERROR)}
    lines.append(f"{len(checks)} checks: {n[OK]} ok, {n[WARN]} warn, {n[ERROR]} error")
    return "\n".join(lines)


TEXT_WIDTH = 120  # per value in the text view; --json has them whole


def _short(value: str) -> str:
    return value if len(value) <= TEXT_WIDTH else value[: TEXT_WIDTH - 3] + "..."


def to_json(checks: list[Check]) -> str:
    return json.dumps(
        {"exit": exit_code(checks), "checks": [asdict(c) | {"id": c.id} for c in _ordered(checks)]}, indent=2
    )


def from_json(data: str) -> list[Check]:
    return [Check(c["area"], c["name"], c["status"], c["expected"], c["found"]) for c in json.loads(data)["checks"]]


def changes(previous: list[Check] | None, current: list[Check]) -> list[str]:
    """What the daily report mails: checks whose status changed (new, gone, or moved)."""
    before = {c.id: c for c in previous or []}
    now = {c.id: c for c in current}
    out = []
    for cid, c in now.items():
        old = before.get(cid)
        if old is None:
            if c.status != OK or previous is None:
                out.append(
                    f"{c.status:<5} {cid}: {c.found} (new check)"
                    if previous is not None
                    else f"{c.status:<5} {cid}: {c.found}"
                )
        elif old.status != c.status:
            out.append(f"{c.status:<5} {cid}: was {old.status}; expected {c.expected}; found {c.found}")
    for cid in before.keys() - now.keys():
        out.append(f"gone  {cid} (was {before[cid].status})")
    if previous is None:
        out = [line for line in out if not line.startswith(OK)]
    return sorted(out)
