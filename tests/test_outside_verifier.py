"""The lab's outside verifier (lab/outside_verifier.py): how its verdict is read back from
a stored copy, and that its configs are what the real OpenDKIM and OpenDMARC take. The
daemons themselves run in the lab (scenarios `submission` and `forwarding`)."""

from __future__ import annotations

from lab import outside_verifier as V

ID = "mx.outside.example.com"

# As the milters wrote them in the lab (OpenDMARC's two above OpenDKIM's), above a
# header our stack's Rspamd added and one a sender forged with our authserv-id lower down.
STORED = (
    b"X-Lab-Mail-From: alice@example.org\r\n"
    b"Authentication-Results: mx.outside.example.com; dmarc=pass (p=quarantine dis=none) header.from=example.org\r\n"
    b"Authentication-Results: mx.outside.example.com; spf=pass smtp.mailfrom=example.org\r\n"
    b"Authentication-Results: mx.outside.example.com;\r\n"
    b'\tdkim=fail reason="signature verification failed" (2048-bit key; unprotected)\r\n'
    b'\theader.d=example.org header.i=@example.org header.b="ab+cd";\r\n'
    b"\tdkim-atps=neutral\r\n"
    b"Received: from mx1.example.org by mx.outside.example.com (Postfix)\r\n"
    b"Authentication-Results: mx1.example.org; dkim=pass header.d=example.org\r\n"
    b"Authentication-Results: MX.Outside.Example.Com; dkim=pass; spf=pass; dmarc=pass\r\n"
    b"Subject: hi\r\n\r\nbody\r\n"
)


def test_verdict_takes_the_topmost_result_of_ours_per_method():
    assert V.verdict(STORED, ID) == {"spf": "pass", "dkim": "fail", "dmarc": "pass"}


def test_verdict_says_missing_without_our_headers():
    other = b"Authentication-Results: mx1.example.org; spf=pass; dkim=pass; dmarc=pass\r\n\r\nx\r\n"
    assert V.verdict(other, ID) == {"spf": "missing", "dkim": "missing", "dmarc": "missing"}


def test_milter_configs_name_the_verifier_and_the_lab_dns():
    dkim, dmarc = V.opendkim_conf(ID), V.opendmarc_conf(ID)
    assert "Mode v" in dkim.splitlines() and f"AuthservID {ID}" in dkim.splitlines()
    assert any(line.startswith("Nameservers ") for line in dkim.splitlines())
    assert "SPFSelfValidate true" in dmarc.splitlines() and f"TrustedAuthservIDs {ID}" in dmarc.splitlines()
    for port in (V.DKIM_PORT, V.DMARC_PORT):
        assert f"127.0.0.1:{port}" in V.MILTERS
