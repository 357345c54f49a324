"""The lab scenarios as tests: the whole mail system booted locally (see docs/lab.md).

Slow (minutes) and root-only, so they run only when asked: `make test-lab` (pytest -m lab;
pytest.ini deselects the marker by default). One module-scoped lab is brought up, shared by every scenario, and
taken down at the end even when a test fails or the run is interrupted.
"""

from __future__ import annotations

import os

import pytest

from lab.scenarios import SCENARIOS, SLOW

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(3600),
]


@pytest.fixture(scope="module")
def lab():
    from lab import stand

    try:
        yield stand.up()
    finally:
        stand.down()


def _check(name: str) -> None:
    from lab import scenarios

    r = scenarios.run_one(name)
    assert r.ok, f"scenario {name}: {r.message}"
    if r.skipped:
        pytest.skip(r.message)


# In the lab's own order: backup-mx, redeploy and reboot come after the basic flow.
# The slow set (lab.scenarios.SLOW) carries the marker `lab_slow` too: `make test`
# leaves it out, `make test-slow` runs it alone.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.lab_slow) if n in SLOW else n for n, _ in SCENARIOS]
)
def test_scenario(lab, name):
    _check(name)
