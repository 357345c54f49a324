"""DKIM key generations and their rotation schedule (docs/dkim.md).

Without `dkim.rotationDays` there is one key per domain, selector `dkim.selector`, as
ever. With it, a new key generation takes over every rotationDays, counted from
`dkim.start`; generation g signs as `<selector>-g<g>` (generation 0 is the key from before
rotation was turned on, under the plain selector). Which generations exist is a pure
function of the settings and the schedule's clock (`dkim.now`, filled in with the time of
`pulumi up` when unset), so one `pulumi up` is one step of the rotation:

    steady   only the signing generation's record is published
    publish  the next generation's record is out too, publishDays (>= the record's TTL)
             before it signs; the next key file is already on mx1, unused
    grace    the next generation signs; the previous one's record stays graceDays for mail
             signed before the switch that is still queued or being verified

After the grace the previous generation is gone everywhere: its record, its key in the
stack's state and its key file on mx1. A generation's key, record and key file exist
together or not at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .settings import Settings

DAY = dt.timedelta(days=1)
STEADY, PUBLISH, GRACE = "steady", "publish", "grace"


@dataclass(frozen=True)
class Generation:
    number: int
    selector: str


@dataclass(frozen=True)
class Plan:
    phase: str
    signing: Generation
    published: tuple[Generation, ...]  # oldest first; always includes `signing`
    # When the phase ends, and which phase follows (None without rotation).
    next_change: dt.datetime | None

    @property
    def selectors(self) -> tuple[str, ...]:
        return tuple(g.selector for g in self.published)


def selector(s: Settings, number: int) -> str:
    return s.dkim.selector if number == 0 else f"{s.dkim.selector}-g{number}"


def generation(s: Settings, number: int) -> Generation:
    return Generation(number, selector(s, number))


def start(s: Settings) -> dt.datetime:
    """When generation 1 starts signing (midnight UTC of `dkim.start`)."""
    d = s.dkim.start
    assert d is not None, "dkim.start is checked by load_settings when rotating"
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def clock(s: Settings) -> dt.datetime:
    now = s.dkim.now
    if now is None:
        raise ValueError(
            "the DKIM schedule needs a clock: load_stack sets dkim.now; tests and the lab set it themselves"
        )
    return now if now.tzinfo else now.replace(tzinfo=dt.UTC)


def plan(s: Settings) -> Plan:
    if not s.dkim.rotation_days:
        g = generation(s, 0)
        return Plan(STEADY, g, (g,), None)
    period = s.dkim.rotation_days * DAY
    lead, grace = s.dkim.publish_days * DAY, s.dkim.grace_days * DAY
    t0, now = start(s), clock(s)
    # Generation c signs during [t0 + (c-1)*period, t0 + c*period); 0 before t0.
    c = 0 if now < t0 else (now - t0) // period + 1
    began = t0 + (c - 1) * period  # when c started signing (meaningless for 0)
    ends = t0 + c * period  # when c+1 takes over
    if c >= 1 and now < began + grace:
        return Plan(GRACE, generation(s, c), (generation(s, c - 1), generation(s, c)), began + grace)
    if now >= ends - lead:
        return Plan(PUBLISH, generation(s, c), (generation(s, c), generation(s, c + 1)), ends)
    return Plan(STEADY, generation(s, c), (generation(s, c),), ends - lead)
