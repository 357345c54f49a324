"""The lab scenarios as tests: the whole mail system booted locally (see docs/lab.md).

Slow (minutes) and root-only, so they run only when asked: `MAILSTACK_LAB=1 pytest -m lab
tests/test_lab.py`. One module-scoped lab is brought up, shared by every scenario, and
taken down at the end even when a test fails or the run is interrupted.
"""
from __future__ import annotations

import os

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILSTACK_LAB") != "1",
                       reason="lab tests boot three containers; set MAILSTACK_LAB=1"),
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


# Order matters: backup-mx and reboot restart hosts, so they come after the basic flow.
def test_inbound_mail_reaches_user_and_alias_over_starttls(lab):
    _check("inbound")


def test_submission_587_465_is_dkim_signed_and_spoofing_refused(lab):
    _check("submission")


def test_no_open_relay_and_no_auth_before_starttls(lab):
    _check("no-open-relay")


def test_backup_mx_queues_while_mx1_is_down_and_delivers_once(lab):
    _check("backup-mx")


def test_user_added_by_mail_sync_replicates_to_imap(lab):
    _check("replication")


def test_gtube_is_rejected(lab):
    _check("spam")


def test_firewall_allows_only_intended_ports(lab):
    _check("firewall")


def test_every_host_comes_back_after_reboot(lab):
    _check("reboot")
