"""DNS model: every record's value, and the zone files served by a real knotd."""

from __future__ import annotations

import re

import dkim
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest

from mailstack import dns as D
from mailstack import hosts as H
from tests.conftest import FAKE_ADDRESSES, _rsa_key, settings_from
from tests.daemons.knot import Knot

DOMAINS = ("example.org", "example.net")


def _pub():
    return D.dkim_public_from_private(_rsa_key())


def _records(settings, addresses=None):
    addrs = addresses or {r: FAKE_ADDRESSES[r] for r in H.hosts(settings)}
    return D.records(settings, addrs, {d: _pub() for d in settings.domains})


def _get(recs, fqdn, rtype):
    found = [r for r in recs if r.fqdn == fqdn and r.type == rtype]
    assert len(found) <= 1, f"{fqdn} {rtype} split over several records"
    return set(found[0].values) if found else set()


def _txt(recs, fqdn):
    return {D.txt_text(v) for v in _get(recs, fqdn, "TXT")}


# --------------------------------------------------------------------------- pure model


def test_zones_dedupe_and_keep_order(settings):
    assert D.zones(settings) == ["example.org", "example.net"]
    other = settings_from(hostnames={"domain": "mailhost.example.com"})
    assert D.zones(other) == ["example.org", "example.net", "mailhost.example.com"]


def test_mx_ha_and_single(settings, single_settings):
    for d in DOMAINS:
        assert _get(_records(settings), f"{d}.", "MX") == {"10 mx1.example.org.", "20 mx2.example.org."}
        assert _get(_records(single_settings), f"{d}.", "MX") == {"10 mx1.example.org."}


def test_spf_lists_exactly_the_sending_hosts(settings, single_settings):
    for d in DOMAINS:
        assert _txt(_records(settings), f"{d}.") == {
            "v=spf1 ip4:198.51.100.11 ip6:2001:db8:11::1 ip4:198.51.100.13 ip6:2001:db8:13::1 -all"
        }
        assert _txt(_records(single_settings), f"{d}.") == {"v=spf1 ip4:198.51.100.11 ip6:2001:db8:11::1 -all"}


def test_host_names_and_helo_spf(settings, single_settings):
    recs = _records(settings)
    expect = {"mx1": "mx1", "imap": "imap", "mx2": "mx2", "smtp": "mx1"}
    for label, role in expect.items():
        fqdn = f"{label}.example.org."
        assert _get(recs, fqdn, "A") == {FAKE_ADDRESSES[role].ipv4}
        assert _get(recs, fqdn, "AAAA") == {FAKE_ADDRESSES[role].ipv6}
        assert _get(recs, fqdn, "CNAME") == set()
    assert _txt(recs, "mx1.example.org.") == {"v=spf1 a -all"}
    assert _txt(recs, "mx2.example.org.") == {"v=spf1 a -all"}
    assert _txt(recs, "imap.example.org.") == set()

    single = _records(single_settings)
    for label in ("mx1", "imap", "smtp"):
        assert _get(single, f"{label}.example.org.", "A") == {"198.51.100.11"}
    assert not [r for r in single if "mx2" in r.name or any("mx2" in v or "198.51.100.13" in v for v in r.values)]


def test_separate_host_domain(settings):
    s = settings_from(hostnames={"domain": "mailhost.example.com"})
    recs = _records(s)
    assert _get(recs, "example.org.", "MX") == {"10 mx1.mailhost.example.com.", "20 mx2.mailhost.example.com."}
    mx1 = [r for r in recs if r.fqdn == "mx1.mailhost.example.com." and r.type == "A"]
    assert [(r.zone, r.name) for r in mx1] == [("mailhost.example.com", "mx1")]
    assert _get(recs, "mailhost.example.com.", "CAA")  # its certificates need CAA too
    assert not [r for r in recs if r.zone == "example.org" and r.name.startswith("mx")]


def test_dkim_record_text_and_split():
    settings = settings_from()
    pub = _pub()
    (value,) = _get(_records(settings), "mail._domainkey.example.org.", "TXT")
    chunks = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
    assert len(chunks) > 1 and all(len(c) <= 255 for c in chunks)
    assert "".join(chunks) == f"v=DKIM1; k=rsa; p={pub}"
    # A real parser agrees on the character-strings.
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
    assert b"".join(rd.strings).decode() == f"v=DKIM1; k=rsa; p={pub}"


def test_txt_split_round_trips_through_dnspython():
    text = 'a"b\\c ' + "x" * 600 + "é"
    value = D.txt(text)
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
    assert all(len(s) <= 255 for s in rd.strings) and len(rd.strings) == 3
    assert b"".join(rd.strings).decode() == text
    assert D.txt_text(value) == text


def _dkim_verify(message: bytes, recs) -> bool:
    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        values = _get(recs, name if name.endswith(".") else name + ".", "TXT")
        return D.txt_text(sorted(values)[0]).encode() if values else None

    return dkim.verify(message, dnsfunc=dnsfunc)


MESSAGE = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: dns test\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <t@example.org>\r\n\r\nhello\r\n"
)


def test_dkim_record_verifies_a_real_signature(settings):
    sig = dkim.sign(
        MESSAGE, b"mail", b"example.org", _rsa_key().encode(), include_headers=[b"from", b"to", b"subject", b"date"]
    )
    assert _dkim_verify(sig + MESSAGE, _records(settings))
    # The same check fails against a record for a different key: it tests the record.
    other = settings_from()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem2 = (
        k2.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    wrong = D.records(other, FAKE_ADDRESSES, {d: D.dkim_public_value(pem2) for d in DOMAINS})
    assert not _dkim_verify(sig + MESSAGE, wrong)


def test_dkim_public_value_matches_private():
    from cryptography.hazmat.primitives import serialization

    priv = serialization.load_pem_private_key(_rsa_key().encode(), None)
    pem = (
        priv.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert D.dkim_public_value(pem) == D.dkim_public_from_private(_rsa_key())


def test_missing_dkim_key_is_an_error(settings):
    with pytest.raises(ValueError, match="example.net"):
        D.records(settings, FAKE_ADDRESSES, {"example.org": _pub()})


def test_dmarc_and_report_authorisation(settings):
    recs = _records(settings)
    for d in DOMAINS:
        assert _txt(recs, f"_dmarc.{d}.") == {
            "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@example.org; pct=100; adkim=r; aspf=r"
        }
    # example.net reports go to example.org, which must say it accepts them (RFC 7489 7.1).
    assert _txt(recs, "example.net._report._dmarc.example.org.") == {"v=DMARC1"}
    assert _txt(recs, "example.org._report._dmarc.example.org.") == set()
    rej = _records(settings_from(dmarc={"policy": "reject", "pct": 50}))
    assert "p=reject" in next(iter(_txt(rej, "_dmarc.example.org.")))
    assert "pct=50" in next(iter(_txt(rej, "_dmarc.example.org.")))


def test_mta_sts_policy_and_tls_rpt(settings, single_settings):
    assert D.mta_sts_policy(settings) == (
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: mx2.example.org\r\nmax_age: 604800\r\n"
    )
    assert "mx2" not in D.mta_sts_policy(single_settings)
    recs = _records(settings)
    pid = D.mta_sts_policy_id(settings)
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", pid)
    for d in DOMAINS:
        assert _txt(recs, f"_mta-sts.{d}.") == {f"v=STSv1; id={pid}"}
        assert _txt(recs, f"_smtp._tls.{d}.") == {"v=TLSRPTv1; rua=mailto:tls-reports@example.org"}
        for label in ("mta-sts", "autoconfig", "autodiscover"):
            assert _get(recs, f"{label}.{d}.", "A") == {"198.51.100.11"}
            assert _get(recs, f"{label}.{d}.", "AAAA") == {"2001:db8:11::1"}


def test_mta_sts_id_changes_exactly_with_the_policy(settings):
    pid = D.mta_sts_policy_id(settings)
    assert D.mta_sts_policy_id(settings_from()) == pid
    assert D.mta_sts_policy_id(settings_from(dns={"ttl": 600})) == pid
    assert D.mta_sts_policy_id(settings_from(users=[{"address": "zed@example.net"}], aliases=[])) == pid
    assert D.mta_sts_policy_id(settings_from(mtaSts={"mode": "testing"})) != pid
    assert D.mta_sts_policy_id(settings_from(mtaSts={"maxAge": 86400})) != pid
    assert D.mta_sts_policy_id(settings_from(topology="single")) != pid


def test_srv_records(settings, single_settings):
    for s in (settings, single_settings):
        recs = _records(s)
        for d in DOMAINS:
            assert _get(recs, f"_submissions._tcp.{d}.", "SRV") == {"0 1 465 smtp.example.org."}
            assert _get(recs, f"_submission._tcp.{d}.", "SRV") == {"0 1 587 smtp.example.org."}
            assert _get(recs, f"_imaps._tcp.{d}.", "SRV") == {"0 1 993 imap.example.org."}
            assert _get(recs, f"_imap._tcp.{d}.", "SRV") == {"0 0 0 ."}
            assert _get(recs, f"_sieve._tcp.{d}.", "SRV") == {"0 1 4190 imap.example.org."}
            assert _get(recs, f"_autodiscover._tcp.{d}.", "SRV") == {f"0 1 443 autodiscover.{d}."}
    # In single the imap name exists and points at mx1, the host running Dovecot.
    assert _get(_records(single_settings), "imap.example.org.", "AAAA") == {"2001:db8:11::1"}


def test_caa_in_every_zone(settings):
    recs = _records(settings)
    for z in D.zones(settings):
        assert _get(recs, f"{z}.", "CAA") == {
            '0 issue "letsencrypt.org"',
            '0 issuewild ";"',
            '0 iodef "mailto:hostmaster@example.org"',
        }


def test_rrsets_are_merged_sorted_deterministic(settings):
    recs = _records(settings)
    keys = [(r.zone, r.name, r.type) for r in recs]
    assert len(keys) == len(set(keys))
    assert recs == _records(settings_from())
    assert all(r.ttl == 3600 for r in recs)
    assert all(r.values == tuple(sorted(set(r.values))) for r in recs)
    assert keys == sorted(keys, key=lambda k: (k[0], k[1] != "@", k[1], k[2]))
    assert all(r.ttl == 600 for r in _records(settings_from(dns={"ttl": 600})))
    table = D.records_table(recs)
    assert table[0].keys() == {"zone", "name", "type", "ttl", "values"}
    assert len(table) == len(recs)


def test_records_ignore_users_and_aliases(settings):
    assert _records(settings) == _records(settings_from(users=[{"address": "zed@example.net"}], aliases=[]))


def test_ptr_is_forward_confirmed_and_covers_exact_ipv6(settings, single_settings):
    # Hetzner reports the /64; the PTR and AAAA must name ::1, the address smtpd uses.
    addrs = {r: H.Address(a.ipv4, a.ipv6.replace("::1", "::/64")) for r, a in FAKE_ADDRESSES.items()}
    recs = _records(settings, addrs)
    ptrs = D.ptr_records(settings, addrs)
    assert {(p.role, p.family) for p in ptrs} == {(r, f) for r in H.ROLES for f in (4, 6)}
    for p in ptrs:
        rtype = "A" if p.family == 4 else "AAAA"
        assert _get(recs, p.name, rtype) == {p.ip}
        assert p.name == f"{H.hosts(settings)[p.role].fqdn}."
    assert {p.ip for p in ptrs if p.family == 6} == {"2001:db8:11::1", "2001:db8:12::1", "2001:db8:13::1"}
    assert [p.role for p in D.ptr_records(single_settings, FAKE_ADDRESSES)] == ["mx1", "mx1"]
    for ip in ("198.51.100.11", "2001:db8:11::1"):
        assert D.reverse_pointer(ip) == dns.reversename.from_address(ip).to_text()


# --------------------------------------------------------------------------- real knot


@pytest.fixture(scope="module")
def knot():
    settings = settings_from()
    recs = _records(settings)
    texts = {z: D.zone_file(z, recs) for z in D.zones(settings)}
    texts.update(D.reverse_zone_files(D.ptr_records(settings, FAKE_ADDRESSES)))
    server = Knot(texts)
    try:
        res = server.check()
        assert res.returncode == 0, res.stdout + res.stderr
        server.start()
        yield server, settings, recs
    finally:
        server.stop()


def test_zone_check_rejects_a_broken_zone():
    # Negative control for `knotc zone-check`: a CNAME next to other data must fail.
    bad = D.zone_file(
        "example.org",
        [
            D.Record("example.org", "www", "CNAME", 300, ("example.org.",)),
            D.Record("example.org", "www", "TXT", 300, ('"x"',)),
        ],
    )
    server = Knot({"example.org": bad})
    try:
        assert server.check().returncode != 0
    finally:
        server.stop()


def test_knot_serves_every_record_as_modelled(knot):
    server, settings, recs = knot
    for r in recs:
        got = server.answer(r.fqdn, r.type)
        want = {
            dns.rdata.from_text(
                dns.rdataclass.IN, dns.rdatatype.from_text(r.type), v, origin=dns.name.root, relativize=False
            ).to_text()
            for v in r.values
        }
        assert got == want, r


def test_dkim_verifies_through_knot(knot):
    server, _, _ = knot

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        for rrset in server.query(name, "TXT").answer:
            return b"".join(rrset[0].strings)
        return None

    sig = dkim.sign(MESSAGE, b"mail", b"example.net", _rsa_key().encode(), include_headers=[b"from", b"to", b"subject"])
    assert dkim.verify(sig + MESSAGE, dnsfunc=dnsfunc)
    tampered = sig + MESSAGE.replace(b"hello", b"hullo")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_knot_ptr_and_forward_agree(knot):
    server, settings, _ = knot
    for p in D.ptr_records(settings, FAKE_ADDRESSES):
        assert server.answer(D.reverse_pointer(p.ip), "PTR") == {p.name}
        assert p.ip in server.answer(p.name, "A" if p.family == 4 else "AAAA")


# --------------------------------------------------------------------------- DKIM rotation


def _rotating(now: str):
    from tests.test_dkim import rotating

    return rotating(now)


def _dkim_rrsets(recs) -> dict[str, str]:
    return {r.fqdn: D.txt_text(r.values[0]) for r in recs if "._domainkey." in r.fqdn}


@pytest.mark.parametrize(
    "now,published",
    [
        ("2026-12-01T00:00:00Z", ("mail",)),  # steady, generation 0
        ("2026-12-26T00:00:00Z", ("mail", "mail-g1")),  # the next key published
        ("2027-01-02T00:00:00Z", ("mail", "mail-g1")),  # g1 signs, mail in its grace
        ("2027-01-09T00:00:00Z", ("mail-g1",)),  # mail's record gone
    ],
)
def test_dkim_records_follow_the_rotation_phase(now, published):
    s = _rotating(now)
    keys = {sel: {d: D.dkim_public_from_private(_other_key(sel)) for d in DOMAINS} for sel in ("mail", "mail-g1")}
    from mailstack import dkim as K

    signing = K.plan(s).signing.selector
    recs = D.records(s, FAKE_ADDRESSES, keys[signing], {sel: keys[sel] for sel in published if sel != signing})
    got = _dkim_rrsets(recs)
    assert got == {f"{sel}._domainkey.{d}.": D.dkim_text(keys[sel][d]) for sel in published for d in DOMAINS}
    # Mail signed with any published generation verifies against these records.
    for sel in published:
        sig = dkim.sign(
            MESSAGE,
            sel.encode(),
            b"example.org",
            _other_key(sel).encode(),
            include_headers=[b"from", b"to", b"subject", b"date"],
        )
        assert _dkim_verify(sig + MESSAGE, recs)


def test_dkim_rotation_needs_every_published_key():
    s = _rotating("2026-12-26T00:00:00Z")
    with pytest.raises(ValueError, match=r"example.org \(selector mail-g1\)"):
        D.records(s, FAKE_ADDRESSES, {d: _pub() for d in DOMAINS})


_KEYS: dict[str, str] = {}


def _other_key(name: str) -> str:
    """A distinct RSA key per selector (test-only)."""
    if name not in _KEYS:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _KEYS[name] = k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode()
    return _KEYS[name]
