"""mailstack status: every decision (ok / warn / error) on plain data, the expectations
derived from the rendering, the output and exit codes, and the change report."""

from __future__ import annotations

import json

import pytest

from mailstack import backup, dns, firewall
from mailstack import hosts as H
from mailstack.status import __main__ as status_main
from mailstack.status import decide, expect, inside, model
from mailstack.status.model import ERROR, OK, WARN, Check
from mailstack.status.outside import parse_values

from .conftest import FAKE_ADDRESSES, settings_from


def st(verdict):
    return verdict[0]


@pytest.fixture
def env(settings):
    pubs = {d: dns.dkim_public_from_private(_key()) for d in settings.domains}
    return expect.Environment(settings, FAKE_ADDRESSES, pubs, {}, lambda r, p: "")


def _key():
    from .conftest import _rsa_key

    return _rsa_key()


# ------------------------------------------------------------------ DNS


def test_rrset_equal_missing_unexpected_error():
    assert st(decide.rrset({"a", "b"}, {"b", "a"})) == OK
    v = decide.rrset({"a", "b"}, {"a"})
    assert v[0] == ERROR and "missing b" in v[2]
    v = decide.rrset({"a"}, {"a", "c"})
    assert v[0] == ERROR and "unexpected c" in v[2]
    assert st(decide.rrset({"a"}, set())) == ERROR  # record removed
    assert st(decide.rrset({"a"}, None, "Timeout")) == ERROR


def test_txt_values_compare_by_text_not_by_split():
    long = "v=DKIM1; k=rsa; p=" + "A" * 400
    rendered = parse_values("TXT", [dns.txt(long)])
    other_split = parse_values("TXT", ['"' + long[:100] + '" "' + long[100:300] + '" "' + long[300:] + '"'])
    assert rendered == other_split == {long}


def test_ptr_needs_name_and_forward_confirmation():
    assert st(decide.ptr("198.51.100.13", "mx2.example.org.", ["mx2.example.org."], ["198.51.100.13"])) == OK
    assert st(decide.ptr("198.51.100.13", "mx2.example.org.", ["evil.example."], ["198.51.100.13"])) == ERROR
    assert st(decide.ptr("198.51.100.13", "mx2.example.org.", [], [])) == ERROR
    v = decide.ptr("198.51.100.13", "mx2.example.org.", ["mx2.example.org."], ["198.51.100.99"])
    assert v[0] == ERROR and "resolves to" in v[2]


def test_delegation_ignores_case_and_trailing_dot():
    assert st(decide.delegation(["ns1.lab.example.com."], ["NS1.lab.example.com"])) == OK
    assert st(decide.delegation(["hydrogen.ns.hetzner.com."], ["ns1.other.example."])) == ERROR


def test_mta_sts_policy(settings):
    pol = dns.mta_sts_policy(settings)
    assert st(decide.mta_sts(pol, 200, pol.replace("\r\n", "\n"))) == OK
    assert st(decide.mta_sts(pol, 200, pol.replace("enforce", "testing"))) == ERROR
    assert st(decide.mta_sts(pol, 404, "")) == ERROR
    assert st(decide.mta_sts(pol, None, None, "refused")) == ERROR


def test_dkim_key_match_and_p_tag():
    assert decide.dkim_p("v=DKIM1; k=rsa; p=AB CD") == "ABCD"
    assert st(decide.dkim_key("ABCD", "ABCD")) == OK
    assert st(decide.dkim_key("ABCD", "ABCE")) == ERROR
    assert st(decide.dkim_key(None, "ABCD")) == ERROR
    assert st(decide.dkim_key("ABCD", None)) == ERROR


# ------------------------------------------------------------------ ports, TLS, SMTP


def test_ports_must_equal_rules_exactly():
    assert st(decide.ports({22, 25, 80}, {80, 25, 22})) == OK
    v = decide.ports({22, 25, 80}, {22, 25, 80, 8080})
    assert v[0] == ERROR and "8080" in v[2] and "not in the firewall" in v[2]
    v = decide.ports({22, 25, 80}, {22, 80})
    assert v[0] == ERROR and "closed: 25" in v[2]


def test_certificate_thresholds_names_trust():
    names = ["mx1.example.org", "smtp.example.org"]
    assert st(decide.certificate(names, 80, names, None)) == OK
    assert st(decide.certificate(names, decide.CERT_WARN_DAYS - 1, names, None)) == WARN
    assert st(decide.certificate(names, decide.CERT_ERROR_DAYS - 0.5, names, None)) == ERROR
    assert st(decide.certificate(names, -1, names, None)) == ERROR
    assert st(decide.certificate(names, 80, ["mx1.example.org"], None)) == ERROR
    assert st(decide.certificate(names, 80, ["*.example.org"], None)) == OK
    assert st(decide.certificate(names, 80, names, "self-signed certificate")) == ERROR
    assert st(decide.certificate(names, None, (), "Connection refused")) == ERROR


def test_banner_names_the_host():
    assert st(decide.banner("mx1.example.org", "220 mx1.example.org ESMTP OpenSMTPD")) == OK
    assert st(decide.banner("mx1.example.org", "220 localhost ESMTP")) == ERROR
    assert st(decide.banner("mx1.example.org", "554 go away")) == ERROR
    assert st(decide.banner("mx1.example.org", None, "refused")) == ERROR
    # judged on the greeting: a refusal shows its reply, a later break is not the banner's
    assert decide.banner("mx1.example.org", "550 5.7.25 no rDNS", "connection closed")[2].startswith("550 5.7.25")
    assert st(decide.banner("mx1.example.org", "220 mx1.example.org ESMTP", "connection closed")) == OK


def test_port_25_refused_for_missing_fcrdns_is_not_judged():
    assert decide.vantage_refused("550 5.7.25 Client host has no reverse DNS")
    assert not decide.vantage_refused("220 mx1.example.org ESMTP")
    assert not decide.vantage_refused("554 5.7.1 go away")
    assert st(decide.not_judged("banner", "550 5.7.25 no rDNS")) == WARN


def test_starttls_offered_auth_hidden():
    assert st(decide.starttls(["PIPELINING", "STARTTLS", "SIZE 1"], True)) == OK
    assert st(decide.starttls(["PIPELINING", "SIZE 1"], False)) == ERROR
    assert st(decide.starttls(["STARTTLS", "AUTH PLAIN LOGIN"], True)) == ERROR
    assert st(decide.starttls(["STARTTLS"], False)) == ERROR
    assert st(decide.starttls(["STARTTLS"], True, auth_after_tls=True)) == OK
    assert st(decide.starttls(["STARTTLS"], True, auth_after_tls=False)) == ERROR
    assert st(decide.starttls(None, False, None, "timeout")) == ERROR


def test_relay_refused_is_ok():
    assert st(decide.relay(550)) == OK
    assert st(decide.relay(454)) == OK
    assert st(decide.relay(250)) == ERROR
    assert st(decide.relay(None, "refused")) == ERROR


def test_dnsbl_listed_unknown_refused():
    assert st(decide.dnsbl([])) == OK
    assert st(decide.dnsbl(["127.0.0.2"])) == ERROR
    assert st(decide.dnsbl(["127.255.255.254"])) == WARN  # Spamhaus: query refused
    assert st(decide.dnsbl(["127.255.255.252", "127.255.255.255"])) == WARN
    assert st(decide.dnsbl(None, "SERVFAIL")) == WARN


# ------------------------------------------------------------------ inside


def test_service_active_and_restarts():
    assert st(decide.service("active", 0)) == OK
    assert st(decide.service("active", 3)) == WARN
    assert st(decide.service("inactive", 0)) == ERROR
    assert st(decide.service("failed", 5)) == ERROR
    assert st(decide.service(None, None)) == ERROR


def test_replication_state_and_lag():
    assert st(decide.replication("streaming", 0, 0.0)) == OK
    assert st(decide.replication("streaming", decide.LAG_BYTES_WARN, 0)) == WARN
    assert st(decide.replication("streaming", decide.LAG_BYTES_ERROR, 0)) == ERROR
    assert st(decide.replication("streaming", 0, decide.LAG_SECONDS_WARN)) == WARN
    assert st(decide.replication("streaming", 0, decide.LAG_SECONDS_ERROR)) == ERROR
    assert st(decide.replication("catchup", 0, 0)) == ERROR
    assert st(decide.replication(None, None, None)) == ERROR


def test_slots():
    assert st(decide.slot(True, 0)) == OK
    assert st(decide.slot(False, 0)) == WARN
    assert st(decide.slot(True, decide.SLOT_RETAINED_WARN)) == WARN
    assert st(decide.slot(False, decide.SLOT_RETAINED_ERROR)) == ERROR
    assert st(decide.slot(None, None)) == ERROR


def test_queue_count_and_age():
    assert st(decide.queue(0, 0)) == OK
    assert st(decide.queue(2, 60)) == OK
    assert st(decide.queue(decide.QUEUE_COUNT_WARN, 0)) == WARN
    assert st(decide.queue(decide.QUEUE_COUNT_ERROR, 0)) == ERROR
    assert st(decide.queue(1, decide.QUEUE_AGE_WARN)) == WARN
    assert st(decide.queue(1, decide.QUEUE_AGE_ERROR)) == ERROR
    assert st(decide.queue(None, None, "smtpctl: not running")) == ERROR


def test_disk():
    assert st(decide.disk(50)) == OK
    assert st(decide.disk(decide.DISK_WARN_PCT)) == WARN
    assert st(decide.disk(100)) == ERROR
    assert st(decide.disk(None, "No such file")) == ERROR


def test_backup_age_and_result():
    import datetime

    now = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC).timestamp()
    ago = lambda h: datetime.datetime.fromtimestamp(now - 3600 * h, datetime.UTC).isoformat()
    ok = lambda h: {"last_run": {"time": ago(h), "result": "ok"}, "last_success": {"time": ago(h)}}
    assert decide.backup(None, now)[0::2] == (WARN, "no backup has run yet")
    assert st(decide.backup(ok(1), now)) == OK
    assert (
        st(
            decide.backup(
                {"last_run": {"time": ago(1), "result": "ok"}, "last_success": {"time": ago(1).replace("+00:00", "Z")}},
                now,
            )
        )
        == OK
    )
    assert st(decide.backup(ok(decide.BACKUP_WARN_HOURS), now)) == WARN
    assert st(decide.backup(ok(decide.BACKUP_ERROR_HOURS), now)) == ERROR
    failed = {
        "last_run": {"time": ago(0), "result": "failed", "error": "sftp: no route"},
        "last_success": {"time": ago(2)},
    }
    v = decide.backup(failed, now)
    assert v[0] == ERROR and "sftp: no route" in v[2]
    running = {"last_run": {"time": ago(0), "result": "running"}, "last_success": {"time": ago(3)}}
    assert st(decide.backup(running, now)) == OK
    assert st(decide.backup({"last_run": {"time": ago(0), "result": "running"}}, now)) == ERROR
    assert st(decide.backup({"last_success": {"time": "yesterday"}}, now)) == ERROR


def test_updates_and_reboot():
    assert st(decide.updates(0, False)) == OK
    assert st(decide.updates(3, False)) == WARN
    assert st(decide.updates(0, True)) == WARN
    assert st(decide.updates(None, False)) == WARN


def test_outbound_names_hetzner_unblock():
    assert st(decide.outbound("mx.example", "220 mx.example ESMTP", None)) == OK
    v = decide.outbound("mx.example", None, "timed out")
    assert v[0] == ERROR and "Hetzner" in v[2] and "unblock" in v[2]


# ------------------------------------------------------------------ expectations


def test_expected_ports_are_the_firewall_rules(settings):
    hs = H.hosts(settings)
    for h in hs.values():
        rule_ports = {int(r.port) for r in firewall.hcloud_rules(settings, h) if r.protocol == "tcp"}
        assert expect.open_ports(h) == rule_ports
    assert expect.open_ports(hs["mx2"]) == {22, 25, 80}
    scan = set(expect.scan_ports())
    assert {24, 5432, 10025, 25, 465, 587, 993, 4190, 443, 80, 22, 8080} <= scan


def test_tls_endpoints_and_names(settings):
    hs = H.hosts(settings)
    assert [p for p, _ in expect.tls_endpoints(settings, hs["mx1"])] == [25, 465, 587, 443]
    assert expect.tls_endpoints(settings, hs["imap"]) == [(993, "imap.example.org"), (4190, "imap.example.org")]
    assert expect.tls_endpoints(settings, hs["mx2"]) == [(25, "mx2.example.org")]


def test_units_follow_services(settings, single_settings):
    hs = H.hosts(settings)
    assert "opensmtpd.service" in expect.units(hs["mx2"]) and "dovecot.service" not in expect.units(hs["mx2"])
    assert "dovecot.service" in expect.units(hs["imap"]) and "opensmtpd.service" not in expect.units(hs["imap"])
    one = H.hosts(single_settings)["mx1"]
    assert {"opensmtpd.service", "dovecot.service", "rspamd.service"} <= set(expect.units(one))


def test_dnsbl_query_names(env):
    qs = expect.dnsbl_queries(env, "mx2")
    assert ("198.51.100.13", "zen.spamhaus.org", "13.100.51.198.zen.spamhaus.org") in qs
    v6 = [q for ip, bl, q in qs if ":" in ip]
    assert v6 and v6[0].startswith("1.0.0.0.") and v6[0].endswith(".zen.spamhaus.org")


def test_inside_program_carries_no_secret(env, settings):
    prog = inside.program(env, "mx1")
    assert "PRIVATE KEY" not in prog and "password" not in prog.lower()
    assert backup.STATUS_FILE in prog


def test_environment_from_pulumi_outputs(settings):
    """`pulumi config --json` + `pulumi stack output --json` -> the same expectations."""
    from .conftest import stack_config

    cfg = {k: {"value": v, "secret": False} for k, v in stack_config().items()}
    pubs = {d: dns.dkim_public_from_private(_key()) for d in settings.domains}
    recs = dns.records(settings, FAKE_ADDRESSES, pubs)
    outputs = {
        "addresses": {r: {"ipv4": a.ipv4, "ipv6": a.ipv6} for r, a in FAKE_ADDRESSES.items()},
        "nameservers": {z: list(dns.HETZNER_NAMESERVERS) for z in dns.zones(settings)},
        "dnsRecords": dns.records_table(recs),
    }
    env = status_main.environment(json.loads(json.dumps(cfg)), outputs)
    assert env.dkim_public == pubs
    assert env.records() == recs
    assert env.nameservers["example.org"] == dns.HETZNER_NAMESERVERS


# ------------------------------------------------------------------ output


def _c(status, name="x"):
    return Check("dns", name, status, "e", "f")


def test_exit_codes():
    assert model.exit_code([_c(OK)]) == 0
    assert model.exit_code([_c(OK), _c(WARN)]) == 2
    assert model.exit_code([_c(WARN), _c(ERROR)]) == 1
    assert model.exit_code([]) == 0


def test_text_and_json_output():
    checks = [Check("disk", "mx1 system (/)", WARN, "< 80% used", "85% used"), _c(OK, "a A")]
    out = model.text(checks)
    assert out.index("[dns]") < out.index("[disk]")
    assert "warn  mx1 system (/): expected < 80% used; found 85% used" in out
    data = json.loads(model.to_json(checks))
    assert data["exit"] == 2 and {c["status"] for c in data["checks"]} == {OK, WARN}
    assert model.from_json(model.to_json(checks)) == model._ordered(checks)


def test_changes_report_only_what_changed():
    before = [_c(OK, "a"), _c(OK, "b"), _c(WARN, "c")]
    assert model.changes(before, before) == []
    now = [_c(ERROR, "a"), _c(OK, "b"), _c(OK, "c"), _c(OK, "d")]
    ch = model.changes(before, now)
    assert len(ch) == 2 and ch[0].startswith("error dns: a: was ok") and "dns: c: was warn" in ch[1]
    assert model.changes(now, now[1:]) == ["gone  dns: a (was error)"]
    # First run: report the problems only.
    assert model.changes(None, [_c(OK, "a"), _c(WARN, "b")]) == ["warn  dns: b: f"]


# ------------------------------------------------------------------ inside checks, daily job


def _data(**over):
    data = {
        "now": 1000.0,
        "units": {
            "opensmtpd.service": {"active": "active", "restarts": 0},
            "postgresql@15-main.service": {"active": "active", "restarts": 0},
        },
        "replicas": [
            {"addr": "10.77.1.12", "state": "streaming", "lag_bytes": "0", "lag_seconds": "0"},
            {"addr": "10.77.1.13", "state": "streaming", "lag_bytes": "0", "lag_seconds": "0"},
        ],
        "slots": {"mailstack_imap": {"active": True, "retained": 0}, "mailstack_mx2": {"active": True, "retained": 0}},
        "queue": {"count": 0, "oldest": 0},
        "disk": {"system": {"path": "/", "pct": 20.0}},
        "backup": {
            "last_run": {"time": "1970-01-01T00:15:00+00:00", "result": "ok"},
            "last_success": {"time": "1970-01-01T00:15:00+00:00"},
        },
        "security_updates": 0,
        "reboot_required": False,
        "dkim": {},
        "dnsbl": {},
        "smtp_probes": {},
    }
    data.update(over)
    return data


def test_hostchecks_from_params_and_data(env):
    from mailstack.status import hostchecks

    params = inside.params(env, "mx1")
    pubs = dict(env.dkim_public)
    data = _data(
        dkim=pubs,
        dnsbl={q: {"answers": []} for _, _, q in params["dnsbl"]},
        smtp_probes={
            k: {"line": f"220 {v[2] or 'mx.outside.test'} ESMTP", "error": None}
            for k, v in params["smtp_probes"].items()
        },
        peers={"mx2": _healthy_peer(params, "mx2")},
    )
    checks = hostchecks.checks(params, data, pubs)
    assert model.exit_code(checks) == 0, [c for c in checks if c.status != OK]
    ids = {c.id for c in checks}
    assert {
        "replication: mx2 streaming",
        "replication: slot mailstack_imap",
        "queue: mx1",
        "outbound: mx1 -> gmail-smtp-in.l.google.com:25",
        "peer: mx1→mx2 v6 :25 banner",
        "dkim: example.org key in use (mx1)",
        "backup: mx1",
    } <= ids
    # the replica on mx2 gone: its replication errors, its slot warns, nothing else moves
    gone = {
        **data,
        "replicas": [data["replicas"][0]],
        "slots": {**data["slots"], "mailstack_mx2": {"active": False, "retained": 0}},
    }
    after = hostchecks.checks(params, gone, pubs)
    assert [c.id for c in after if c.status == ERROR] == ["replication: mx2 streaming"]
    assert hostchecks.unreachable("imap", "ssh: timeout")[0].status == ERROR


def test_daily_mail_only_on_change(env, settings):
    from mailstack.status import daily

    conf = {"host": "mx1.example.org", "mail_from": "a@mx1.example.org", "mail_to": "postmaster@example.org"}
    before = [_c(OK, "a"), _c(OK, "b")]
    assert daily.report(conf, before, before) is None
    msg = daily.report(conf, before, [_c(ERROR, "a"), _c(OK, "b")])
    assert msg["To"] == "postmaster@example.org" and "1 error" in msg["Subject"]
    assert "error dns: a: was ok" in msg.get_content()


def test_daily_job_is_standard_library_only_and_carries_no_secret(settings):
    """The job runs under the server's python3: its modules import nothing else."""
    import ast
    import sys
    from pathlib import Path

    from mailstack.status import timer

    from .conftest import make_context

    here = Path(timer.__file__).parent
    for m in timer.MODULES:
        tree = ast.parse((here / m).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                # a shipped sibling (collect.py's `import probe` in the daily job)
                names = [n for n in names if f"{n}.py" not in timer.MODULES]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must be one of the shipped modules
                    assert f"{node.module}.py" in timer.MODULES or node.module is None, (m, node.module)
                    continue
                names = [node.module]
            else:
                continue
            for n in names:
                assert n.split(".")[0] in sys.stdlib_module_names, (m, n)
    ctx = make_context(settings)
    b = timer.bundle(ctx, ctx.hosts["mx1"])
    assert timer.bundle(ctx, ctx.hosts["imap"]).files == ()
    text = "".join(f.content for f in b.files)
    for pem in ctx.secrets.dkim_keys.values():
        assert pem.strip().splitlines()[1] not in text
    assert ctx.secrets.replication_password not in text
    conf = json.loads(b.file(f"{timer.CONF_DIR}/daily.json").content)
    assert conf["mail_to"] == "postmaster@example.org"

    # the job looks at mx2 too, with the expectations rendered from the settings: SSH is
    # closed to mx1 unless admin.sshCidrs covers its address
    def peer_open(bundle):
        return json.loads(bundle.file(f"{timer.CONF_DIR}/params.json").content)["peers"]["hosts"]["mx2"]["open"]

    assert peer_open(b) == {"v4": [25, 80], "v6": [25, 80]}
    inside_cidrs = make_context(settings_from(admin={"sshCidrs": ["198.51.100.0/24"], "sshKeys": []}))
    assert peer_open(timer.bundle(inside_cidrs, inside_cidrs.hosts["mx1"]))["v4"] == [22, 25, 80]


def test_a_failed_ptr_lookup_is_an_error_line_not_a_crash(env, monkeypatch):
    """The DNS jobs turn a resolver failure into an `error` check (this path once raised
    NameError and took the whole run down)."""
    from mailstack.status import engine, outside

    monkeypatch.setattr(outside, "lookup", lambda env, name, rtype: (None, "Timeout: no answer"))
    checks = [c for job in engine._dns_jobs(env) for c in job()]
    rdns = [c for c in checks if c.area == "rdns"]
    assert rdns and all(c.status == ERROR and "no answer" in c.found for c in rdns)


# ------------------------------------------------------------------ the MX hosts' view of each other


def test_peer_sees_what_the_firewall_lets_in_from_its_address(settings, env):
    """mx1 looking at mx2 and back: the rules read for the peer's public source address.
    SSH only where admin.sshCidrs covers the peer (the cloud firewall and the deployed
    nftables both say so), never the private flows (mx2 may reach mx1's relay port 10025
    only on the private network)."""
    hs = H.hosts(settings)
    assert expect.peer_open_ports(env, hs["mx2"], "mx1", 4) == {25, 80}
    assert expect.peer_open_ports(env, hs["mx1"], "mx2", 6) == {25, 80, 443, 465, 587}
    assert [h.role for h in expect.peers(env, "mx1")] == ["mx2"]
    assert [h.role for h in expect.peers(env, "mx2")] == ["mx1"] and expect.peers(env, "imap") == []
    # the peer inside admin.sshCidrs: SSH answers, on that family only
    s2 = settings_from(admin={"sshCidrs": ["198.51.100.11/32"], "sshKeys": []})
    e2 = expect.Environment(s2, FAKE_ADDRESSES, {}, {}, None)
    h2 = H.hosts(s2)
    assert expect.peer_open_ports(e2, h2["mx2"], "mx1", 4) == {22, 25, 80}
    assert expect.peer_open_ports(e2, h2["mx2"], "mx1", 6) == {25, 80}
    # the private flows (relay port, PostgreSQL) never answer on a public address
    assert not {10025, 5432} & expect.peer_open_ports(env, hs["mx1"], "mx2", 4)


def test_peer_params_from_the_rendering(env, settings):
    p = inside.params(env, "mx2")["peers"]
    assert p["helo"] == "mx2.example.org" and p["source"] == {"v4": "198.51.100.13", "v6": "2001:db8:13::1"}
    mx1 = p["hosts"]["mx1"]
    assert mx1["ip"] == {"v4": "198.51.100.11", "v6": "2001:db8:11::1"}
    assert [port for port, _ in mx1["tls"]] == [25, 465, 587, 443]
    assert mx1["open"] == {"v4": [25, 80, 443, 465, 587], "v6": [25, 80, 443, 465, 587]}
    assert mx1["cert_names"] == expect.cert_names(settings, H.hosts(settings)["mx1"])
    assert inside.params(env, "imap")["peers"] == {}
    # the program on the host carries the probes: the same file the operator's side runs
    prog = inside.program(env, "mx2")
    assert json.dumps(inside.PROBE.read_text()) in prog


def _healthy_peer(params: dict, other: str) -> dict:
    """What collect.py reports for a healthy peer, per family."""
    exp = params["peers"]["hosts"][other]
    fam = {"open": None, "tls": {}, "smtp": {}}
    for port, sni in exp["tls"]:
        fam["tls"][str(port)] = {"days_left": 60.0, "names": list(exp["cert_names"]), "verify_error": None}
        if port == 25:
            fam["smtp"]["25"] = {
                "banner": f"220 {exp['fqdn']} ESMTP OpenSMTPD",
                "features": ["PIPELINING", "8BITMIME", "STARTTLS"],
                "tls_ok": True,
                "auth_after_tls": False,
                "relay_reply": 550,
                "error": None,
            }
        elif port == 587:
            fam["smtp"]["587"] = {
                "banner": f"220 {sni} ESMTP OpenSMTPD",
                "features": ["STARTTLS"],
                "tls_ok": True,
                "auth_after_tls": True,
                "relay_reply": None,
                "error": None,
            }
        elif port == 465:
            fam["smtp"]["465"] = {"banner": f"220 {sni} ESMTP OpenSMTPD", "error": None}
    return {f: {**json.loads(json.dumps(fam)), "open": exp["open"][f]} for f in ("v4", "v6")}


def _peer(env, role: str, other: str, **over) -> dict[str, Check]:
    from mailstack.status import hostchecks

    params = inside.params(env, role)
    got = _healthy_peer(params, other)
    for path, value in over.items():  # "v4.smtp.25.relay_reply": 250
        *keys, last = path.split(".")
        d = got
        for k in keys:
            d = d[k]
        d[last] = value
    return {c.name: c for c in hostchecks.peer_checks(params, {"peers": {other: got}})}


def test_peer_checks_healthy_and_named_by_vantage(env):
    checks = _peer(env, "mx2", "mx1")
    assert all(c.status == OK and c.area == "peer" for c in checks.values()), [
        c for c in checks.values() if c.status != OK
    ]
    assert {
        "mx2→mx1 v4 ports",
        "mx2→mx1 v6 ports",
        "mx2→mx1 v4 :25 certificate (mx1.example.org)",
        "mx2→mx1 v6 :443 certificate (mta-sts.example.org)",
        "mx2→mx1 v4 :25 banner",
        "mx2→mx1 v4 :25 STARTTLS",
        "mx2→mx1 v4 :25 no open relay",
        "mx2→mx1 v6 :587 STARTTLS",
        "mx2→mx1 v4 :465 banner",
    } <= set(checks)
    assert set(_peer(env, "mx1", "mx2")) == {
        f"mx1→mx2 {f} {w}"
        for f in ("v4", "v6")
        for w in ("ports", ":25 certificate (mx2.example.org)", ":25 banner", ":25 STARTTLS", ":25 no open relay")
    }


@pytest.mark.parametrize(
    "over, bad",
    [
        ({"v4.open": [25, 80, 8080]}, {"mx1→mx2 v4 ports"}),  # a port opened
        ({"v6.open": [80]}, {"mx1→mx2 v6 ports"}),  # smtpd gone on v6
        ({"v4.smtp.25.relay_reply": 250}, {"mx1→mx2 v4 :25 no open relay"}),  # open relay
        ({"v4.smtp.25.banner": "220 localhost ESMTP"}, {"mx1→mx2 v4 :25 banner"}),
        ({"v6.smtp.25.features": ["STARTTLS", "AUTH PLAIN"]}, {"mx1→mx2 v6 :25 STARTTLS"}),  # AUTH before TLS
        ({"v4.smtp.25.features": ["PIPELINING"], "v4.smtp.25.tls_ok": False}, {"mx1→mx2 v4 :25 STARTTLS"}),
        ({"v4.tls.25.days_left": 3.0}, {"mx1→mx2 v4 :25 certificate (mx2.example.org)"}),  # < 7 days
        (
            {"v4.tls.25.verify_error": "unable to get local issuer certificate"},
            {"mx1→mx2 v4 :25 certificate (mx2.example.org)"},
        ),  # not trusted
        ({"v6.tls.25.names": ["mx1.example.org"]}, {"mx1→mx2 v6 :25 certificate (mx2.example.org)"}),
    ],
)
def test_peer_checks_turn_exactly_their_check_to_error(env, over, bad):
    checks = _peer(env, "mx1", "mx2", **over)
    assert {n for n, c in checks.items() if c.status == ERROR} == bad
    assert all(c.status == OK for n, c in checks.items() if n not in bad)


def test_peer_certificate_close_to_expiry_warns_and_submission_needs_auth_after_tls(env):
    checks = _peer(env, "mx1", "mx2", **{"v4.tls.25.days_left": 15.0})
    assert checks["mx1→mx2 v4 :25 certificate (mx2.example.org)"].status == WARN
    sub = _peer(env, "mx2", "mx1", **{"v4.smtp.587.auth_after_tls": False})
    assert (
        sub["mx2→mx1 v4 :587 STARTTLS"].status == ERROR and "no AUTH after TLS" in sub["mx2→mx1 v4 :587 STARTTLS"].found
    )


def test_peer_refused_for_its_rdns_is_an_error(env):
    """From a mail host a 550 5.7.25 is not a vantage problem (as from an operator's line):
    the peer's own rDNS is broken, so other mail servers refuse it too."""
    refused = {
        "banner": "550 5.7.25 Client host reverse DNS does not resolve back to its address",
        "features": None,
        "tls_ok": False,
        "auth_after_tls": None,
        "relay_reply": None,
        "error": "ConnectionError: connection closed",
    }
    checks = _peer(env, "mx2", "mx1", **{"v4.smtp.25": refused})
    assert {n for n, c in checks.items() if c.status == ERROR} == {
        "mx2→mx1 v4 :25 banner",
        "mx2→mx1 v4 :25 STARTTLS",
        "mx2→mx1 v4 :25 no open relay",
    }
    assert "5.7.25" in checks["mx2→mx1 v4 :25 banner"].found


def test_a_peer_without_results_is_an_error(env):
    from mailstack.status import hostchecks

    params = inside.params(env, "mx1")
    checks = hostchecks.peer_checks(params, {"peers": {}})
    assert [(c.name, c.status) for c in checks] == [("mx1→mx2 v4 ports", ERROR), ("mx1→mx2 v6 ports", ERROR)]


def test_certificate_expiry_and_names_read_with_the_standard_library():
    """probe.cert_info (no third-party parser on the hosts) agrees with cryptography's
    reading: UTCTime and GeneralizedTime expiry, SAN DNS names, none without SAN."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from mailstack.status import probe

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx2.example.org")])
    now = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)

    def cert(not_after, sans):
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(7)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    days, names = probe.cert_info(
        cert(now + datetime.timedelta(days=5, hours=12), ["mx2.example.org", "smtp.example.org"]), now
    )
    assert abs(days - 5.5) < 1e-6 and names == ("mx2.example.org", "smtp.example.org")
    days, names = probe.cert_info(cert(datetime.datetime(2051, 1, 1, tzinfo=datetime.UTC), []), now)
    assert names == () and 8795 < days < 8797  # GeneralizedTime from 2050 on


def test_peer_ports_are_judged_per_family():
    """mx1 in admin.sshCidrs by its IPv4 only: mx2's SSH answers mx1 on v4, not on v6,
    and each family is held to its own expectation."""
    from mailstack.status import hostchecks

    s = settings_from(admin={"sshCidrs": ["198.51.100.11/32"], "sshKeys": []})
    e = expect.Environment(s, FAKE_ADDRESSES, {}, {}, None)
    params = inside.params(e, "mx1")
    assert params["peers"]["hosts"]["mx2"]["open"] == {"v4": [22, 25, 80], "v6": [25, 80]}
    healthy = _healthy_peer(params, "mx2")
    checks = hostchecks.peer_checks(params, {"peers": {"mx2": healthy}})
    assert all(c.status == OK for c in checks), [c for c in checks if c.status != OK]
    healthy["v6"]["open"] = [22, 25, 80]
    bad = [c.name for c in hostchecks.peer_checks(params, {"peers": {"mx2": healthy}}) if c.status == ERROR]
    assert bad == ["mx1→mx2 v6 ports"]


def test_untrusted_certificate_is_still_described(tmp_path):
    """probe.certificate over a real TLS handshake on loopback: with the issuing CA
    trusted it reports days and names; without, the verify error and still the days and
    names (the unverified second look, which the standard library can't decode)."""
    import datetime
    import socket
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from mailstack.status import probe

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "status test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx2.example.org")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    lsock.settimeout(20)

    def serve():  # one handshake for the trusted look, two for the untrusted: bounded
        for _ in range(3):
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            try:
                with srv.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        ok = probe.certificate(
            probe.Origin("p.invalid", cafile=str(tmp_path / "c.pem")), "127.0.0.1", port, "mx2.example.org"
        )
        assert ok.verify_error is None and ok.names == ("mx2.example.org",) and 9.9 < ok.days_left < 10.1
        # the system's store: a private CA is not in it
        bad = probe.certificate(probe.Origin("p.invalid"), "127.0.0.1", port, "mx2.example.org")
        assert bad.verify_error and bad.names == ("mx2.example.org",) and 9.9 < bad.days_left < 10.1
        assert st(decide.certificate(["mx2.example.org"], bad.days_left, bad.names, bad.verify_error)) == ERROR
    finally:
        lsock.close()
        t.join(5)


def test_environment_follows_the_deployed_dkim_phase():
    """With DKIM rotation the expectations are the phase the last `pulumi up` deployed
    (its `dkimSchedule` output), not today's: both records of the grace, the new key on mx1."""
    from .conftest import settings_from, stack_config
    from .test_dns import _other_key

    rotation = {"rotationDays": 90, "start": "2027-01-01"}
    s = settings_from(dkim={**rotation, "now": "2027-01-02T00:00:00Z"})  # grace: g1 signs
    cfg = {k: {"value": v, "secret": False} for k, v in stack_config(dkim=rotation).items()}
    pub = {sel: {d: dns.dkim_public_from_private(_other_key(sel)) for d in s.domains} for sel in ("mail", "mail-g1")}
    recs = dns.records(s, FAKE_ADDRESSES, pub["mail-g1"], {"mail": pub["mail"]})
    outputs = {
        "addresses": {r: {"ipv4": a.ipv4, "ipv6": a.ipv6} for r, a in FAKE_ADDRESSES.items()},
        "nameservers": {z: list(dns.HETZNER_NAMESERVERS) for z in dns.zones(s)},
        "dnsRecords": dns.records_table(recs),
        "dkimSchedule": {"now": "2027-01-02T00:00:00+00:00"},
    }
    env = status_main.environment(json.loads(json.dumps(cfg)), outputs)
    assert env.dkim_public == pub["mail-g1"] and env.dkim_published == {"mail": pub["mail"]}
    assert env.records() == recs
    assert expect.dkim_keys(env.settings)["example.org"].endswith("/example.org.mail-g1.key")
