"""The fault scenarios' verdict (lab/scenarios/load.py `judge`): every way a message can
go wrong under a fault is seen. The lab runs it on real mailboxes; here on made-up ones."""

from __future__ import annotations

from lab.scenarios.load import judge, scanned

SENT = {"a@outside": "alice@example.org", "b@outside": "bob@example.org"}


def test_exactly_once_and_scanned_is_clean():
    v = judge(SENT, {"alice@example.org": [("a@outside", True)], "bob@example.org": [("b@outside", True)]})
    assert (v.lost, v.twice, v.wrong, v.unscanned) == ([], [], [], [])


def test_each_fault_is_seen():
    v = judge(
        SENT,
        {
            "alice@example.org": [("a@outside", True), ("a@outside", True), ("b@outside", True)],
            "bob@example.org": [("x@outside", False)],
        },
    )
    assert v.twice == ["a@outside"]
    assert v.lost == ["b@outside"]  # bob's copy went to alice
    assert v.wrong == ["b@outside"]
    assert v.unscanned == ["x@outside"]  # a copy that never met Rspamd


def test_only_our_verdict_counts_as_scanned():
    ours = b"Message-ID: <a@outside>\r\nAuthentication-Results: mx2.example.org;\r\n\tspf=pass\r\n"
    assert scanned(ours, "example.org")
    assert scanned(b"authentication-results: MX1.Example.org; dkim=none\r\n", "example.org")
    # Another system's verdict, or none, is not ours.
    assert not scanned(b"Authentication-Results: mx.outside.example.com; spf=pass\r\n", "example.org")
    assert not scanned(b"Authentication-Results: evil-example.org; spf=pass\r\n", "example.org")
    assert not scanned(b"Message-ID: <a@outside>\r\n", "example.org")
