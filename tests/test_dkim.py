"""DKIM key rotation: the schedule (mailstack/dkim.py) and the settings that refuse a
schedule which could not keep its promises."""

from __future__ import annotations

import datetime as dt

import pytest

from mailstack import dkim
from mailstack.settings import SettingsError, load_settings, with_clock
from tests.conftest import settings_from, stack_config

ROTATION = {"selector": "mail", "rotationDays": 90, "publishDays": 7, "graceDays": 7, "start": "2027-01-01"}


_BASE = settings_from(dkim=ROTATION)


def rotating(now: str):
    clock = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
    return _BASE.model_copy(update={"dkim": _BASE.dkim.model_copy(update={"now": clock})})


# (clock, phase, signing selector, published selectors): every phase of two rotations.
TIMELINE = [
    ("2026-12-01T00:00:00Z", dkim.STEADY, "mail", ("mail",)),
    ("2026-12-25T00:00:00Z", dkim.PUBLISH, "mail", ("mail", "mail-g1")),  # start - 7 days
    ("2026-12-31T23:59:59Z", dkim.PUBLISH, "mail", ("mail", "mail-g1")),
    ("2027-01-01T00:00:00Z", dkim.GRACE, "mail-g1", ("mail", "mail-g1")),
    ("2027-01-07T23:59:59Z", dkim.GRACE, "mail-g1", ("mail", "mail-g1")),
    ("2027-01-08T00:00:00Z", dkim.STEADY, "mail-g1", ("mail-g1",)),  # grace over
    ("2027-03-25T00:00:00Z", dkim.PUBLISH, "mail-g1", ("mail-g1", "mail-g2")),
    ("2027-04-01T00:00:00Z", dkim.GRACE, "mail-g2", ("mail-g1", "mail-g2")),
    ("2027-04-08T00:00:00Z", dkim.STEADY, "mail-g2", ("mail-g2",)),
]


@pytest.mark.parametrize("now,phase,signing,published", TIMELINE)
def test_schedule_phases(now, phase, signing, published):
    p = dkim.plan(rotating(now))
    assert (p.phase, p.signing.selector, p.selectors) == (phase, signing, published)


def test_every_transition_is_safe():
    """Walked six hours at a time over a year: a generation signs only after its record
    was published for publishDays (>= the TTL), and a record leaves only graceDays after
    its generation last signed; key, record and key file come and go together."""
    t = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    first_published: dict[str, dt.datetime] = {}
    last_signed: dict[str, dt.datetime] = {}
    prev = None
    while t < dt.datetime(2027, 12, 1, tzinfo=dt.UTC):
        p = dkim.plan(rotating(t.isoformat()))
        for sel in p.selectors:
            first_published.setdefault(sel, t)
        assert p.signing.selector in p.selectors
        assert t - first_published[p.signing.selector] >= dt.timedelta(days=7) or p.signing.number == 0
        last_signed[p.signing.selector] = t
        if prev is not None:
            for gone in set(prev.selectors) - set(p.selectors):
                assert t - last_signed[gone] >= dt.timedelta(days=7), (gone, t)
                # never comes back
                first_published[gone] = dt.datetime.max.replace(tzinfo=dt.UTC)
        assert len(p.selectors) <= 2
        prev = p
        t += dt.timedelta(hours=6)
    assert prev.signing.number == 4


def test_no_rotation_is_one_key_under_the_plain_selector(settings):
    p = dkim.plan(settings)
    assert (p.phase, p.signing, p.selectors) == (dkim.STEADY, dkim.Generation(0, "mail"), ("mail",))
    assert settings.dkim.now is None and with_clock(settings, dt.datetime.now()) is settings


def test_pulumi_up_reads_the_clock_once():
    s = settings_from(dkim=ROTATION)
    with pytest.raises(ValueError, match="needs a clock"):
        dkim.plan(s)
    fixed = with_clock(s, dt.datetime(2027, 1, 2, tzinfo=dt.UTC))
    assert dkim.plan(fixed).signing.selector == "mail-g1"
    # A clock in the config wins (the lab's and the tests').
    s2 = settings_from(dkim={**ROTATION, "now": "2026-12-01T00:00:00Z"})
    assert with_clock(s2, dt.datetime(2027, 1, 2, tzinfo=dt.UTC)) is s2


def _problems(**dkim_cfg) -> list[str]:
    with pytest.raises(SettingsError) as exc:
        load_settings(stack_config(dkim=dkim_cfg))
    return exc.value.problems


def test_rotation_without_start_is_refused():
    (p,) = _problems(rotationDays=90)
    assert p.startswith("mailstack:dkim.start: is required with dkim.rotationDays 90")
    assert "pulumi config set --path mailstack:dkim.start YYYY-MM-DD" in p


def test_start_without_rotation_is_refused():
    (p,) = _problems(start="2027-01-01")
    assert p.startswith("mailstack:dkim.start: '2027-01-01' is set but dkim.rotationDays is 0")
    assert "remove dkim.start" in p


def test_next_key_is_out_for_at_least_a_ttl_before_it_signs():
    """publishDays counts whole days and the longest TTL allowed is one: the bounds of
    the two fields keep this promise (raising dns.ttl's limit must revisit it)."""
    from mailstack.settings import Dkim, Dns

    min_publish = Dkim.model_fields["publish_days"].metadata
    max_ttl = Dns.model_fields["ttl"].metadata
    assert min(m.ge for m in min_publish if hasattr(m, "ge")) * 86400 >= max(m.le for m in max_ttl if hasattr(m, "le"))
    (p,) = _problems(**{**ROTATION, "publishDays": 0})
    assert p.startswith("mailstack:dkim.publishDays: 0 is invalid")


def test_publish_and_grace_must_fit_in_the_period():
    (p,) = _problems(**{**ROTATION, "rotationDays": 10})
    assert p.startswith("mailstack:dkim.rotationDays: 10 is shorter than dkim.publishDays (7) + dkim.graceDays (7)")
    assert "raise rotationDays" in p


def test_selector_leaves_room_for_the_generation():
    (p,) = _problems(selector="x" * 52)
    assert p.startswith("mailstack:dkim.selector: 'xxxx")
    assert "at most 51 characters" in p
    (p,) = _problems(selector="Mail_1")
    assert "is not a DNS label" in p
