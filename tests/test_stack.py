"""The Pulumi program under mocks: which resources it declares, with which inputs,
options and dependencies, for the example stack and its variants."""

from __future__ import annotations

import difflib
import json
from collections import Counter
from functools import cache

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from mailstack import deploy, dns, firewall, ssh
from mailstack import hosts as H
from mailstack.settings import SettingsError, load_settings
from tests import pulumi_mocks
from tests.conftest import TEST_HASH
from tests.pulumi_mocks import (
    MOCK_HOST_KEY,
    MOCK_LOCATIONS,
    MOCK_SERVER_TYPES,
    SNAPSHOT_DIR,
    Run,
    _keypair,
    example_config,
    run_program,
    snapshot_text,
)

SERVER = "hcloud:index/server:Server"
PRIMARY_IP = "hcloud:index/primaryIp:PrimaryIp"
RDNS = "hcloud:index/rdns:Rdns"
FIREWALL = "hcloud:index/firewall:Firewall"
ZONE = "hcloud:index/zone:Zone"
RRSET = "hcloud:index/zoneRrset:ZoneRrset"
VOLUME = "hcloud:index/volume:Volume"
ATTACH = "hcloud:index/volumeAttachment:VolumeAttachment"
COMMAND = "command:remote:Command"
PASSWORD = "random:index/randomPassword:RandomPassword"
KEY = "tls:index/privateKey:PrivateKey"
STORAGE_BOX = "hcloud:index/storageBox:StorageBox"


def _freeze(overrides: dict) -> str:
    return json.dumps(overrides, sort_keys=True)


@cache
def _run(frozen: str, extra_secret: tuple[str, ...] = ()) -> tuple[Run, object]:
    overrides = json.loads(frozen)
    config, secret_keys = example_config(**overrides)
    run = run_program(config, secret_keys + extra_secret)
    return run, load_settings(config, secret_keys + extra_secret)


def stack(**overrides) -> Run:
    return _run(_freeze(overrides))[0]


def settings_of(**overrides):
    return _run(_freeze(overrides))[1]


def by_id(run: Run, typ: str) -> dict[str, object]:
    return {r.id: r for r in run.of_type(typ)}


def as_id(value) -> str:
    return str(int(value)) if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- inventory


def test_ha_declares_every_resource_once():
    run, s = stack(), settings_of()
    counts = Counter(r.type for r in run.resources if r.custom)
    zones = dns.zones(s)
    assert counts == {
        "hcloud:index/network:Network": 1,
        "hcloud:index/networkSubnet:NetworkSubnet": 1,
        "hcloud:index/placementGroup:PlacementGroup": 1,
        "hcloud:index/sshKey:SshKey": len(s.admin.ssh_keys) + 1,
        FIREWALL: 3,
        PRIMARY_IP: 6,
        SERVER: 3,
        RDNS: 6,
        VOLUME: 1,
        ATTACH: 1,
        ZONE: len(zones),
        RRSET: len(dns.records(s, _addresses(run), _dkim(s))),
        COMMAND: len(deploy.plan(s)) + 3,  # + host-key-<role> per server
        # replication, lookup, quota, rspamd, redis, the SRS key; the users' initial
        # passwords; a restic password per data host (mx1, imap) and the Storage Box's own
        PASSWORD: 6 + sum(1 for u in s.users if u.password_hash is None) + 2 + 1,
        KEY: 1 + len(s.domains) + 2 + 1,  # + a backup SSH key per data host, and the box's own
        STORAGE_BOX: 1,
    }


def test_storage_box_is_protected_and_keeps_its_keys():
    run = stack()
    box = run.one(STORAGE_BOX, "mailstack-dev-backup")
    assert box.protect and box.inputs["deleteProtection"] is True
    # Hetzner can't update a box's keys: a changed list must not replace it.
    assert box.ignore_changes == ["sshKeys"]
    # Created with its own key (for the backup-keys step) and the hosts' keys.
    assert box.inputs["sshKeys"][1:] == [k.strip() for _, k in sorted(run.outputs["backupPublicKeys"].items())]
    assert len(box.inputs["sshKeys"]) == 3
    assert box.inputs["accessSettings"]["sshEnabled"] is True
    assert "password" in box.secret_inputs


def test_backup_target_none_declares_no_backup_resources():
    run = stack(backup={"target": "none"})
    assert not run.of_type(STORAGE_BOX)
    assert not [c for c in run.of_type(COMMAND) if c.name.startswith("backup-")]
    assert not [p for p in run.of_type(PASSWORD) if p.name.startswith("backup-")]


def _addresses(run: Run) -> dict[str, H.Address]:
    return {r: H.Address(a["ipv4"], a["ipv6"]) for r, a in run.outputs["addresses"].items()}


def _dkim(s) -> dict[str, str]:
    return {d: dns.dkim_public_value(_keypair("RSA", f"dkim-{d}")["publicKeyPem"]) for d in s.domains}


# --------------------------------------------------------------------------- servers


def test_servers_use_persistent_primary_ips_and_fixed_private_ips():
    run, s = stack(), settings_of()
    ips = by_id(run, PRIMARY_IP)
    firewalls = {r.name: r.id for r in run.of_type(FIREWALL)}
    subnet = run.one("hcloud:index/networkSubnet:NetworkSubnet", "mailstack-dev")
    assert subnet.inputs["ipRange"] == "10.77.1.0/24" and subnet.inputs["networkZone"] == "eu-central"
    for ip in ips.values():
        assert ip.inputs["autoDelete"] is False
        assert "assigneeType" not in ip.inputs and "assigneeId" not in ip.inputs
        assert ip.inputs["deleteProtection"] is True
        assert ip.inputs["location"] == "fsn1"
    for role, host in H.hosts(s).items():
        server = run.one(SERVER, role)
        i = server.inputs
        assert i["name"] == host.fqdn
        assert (i["image"], i["location"], i["serverType"]) == ("debian-12", "fsn1", "cx23")
        net = i["publicNets"][0]
        assert ips[as_id(net["ipv4"])].name == f"{role}-ipv4"
        assert ips[as_id(net["ipv6"])].name == f"{role}-ipv6"
        assert i["networks"][0]["ip"] == host.private_ip
        assert [as_id(f) for f in i["firewallIds"]] == [firewalls[role]]
        # The primary IPs can only follow a rebuilt server if the old one goes first.
        assert server.delete_before_replace
        assert "sshKeys" in server.ignore_changes
        assert any(d.endswith("NetworkSubnet::mailstack-dev") for d in server.dependencies)


def test_user_data_fits_and_holds_no_secret():
    run = stack()
    fragments = run.mocks.secret_fragments()
    assert fragments, "the mocks generated no secrets to look for"
    for server in run.of_type(SERVER):
        data = server.inputs["userData"]
        assert 0 < len(data.encode()) <= 32 * 1024
        assert "userData" not in server.secret_inputs
        leaked = [f for f in fragments if f in data]
        assert not leaked, f"{server.name} user-data holds generated secrets"


def test_no_generated_secret_in_any_clear_input_or_output():
    run = stack()
    fragments = run.mocks.secret_fragments() + ["MOCKSECRET"]
    for r in run.resources:
        for key, value in r.inputs.items():
            if key in r.secret_inputs:
                continue
            text = json.dumps(value)
            assert not [f for f in fragments if f in text], f"{r.type} {r.name}.{key} holds a secret in clear"
    for key, value in run.outputs.items():
        if key not in run.secret_outputs:
            text = json.dumps(value)
            assert not [f for f in fragments if f in text], f"output {key} holds a secret in clear"


def test_configured_password_hash_stays_secret_and_gets_no_generated_password():
    users = [
        {"address": "alice@example.org", "passwordHash": TEST_HASH},
        {"address": "bob@example.org"},
        {"address": "carol@example.net"},
    ]
    frozen = _freeze({"users": users})
    run, _ = _run(frozen, ("mailstack:users",))
    assert "user-alice@example.org" not in {r.name for r in run.of_type(PASSWORD)}
    assert set(run.outputs["initialPasswords"]) == {"bob@example.org", "carol@example.net"}
    for r in run.resources:
        clear = {k: v for k, v in r.inputs.items() if k not in r.secret_inputs}
        assert TEST_HASH not in json.dumps(clear), f"{r.name} shows a password hash"


def test_mail_settings_never_touch_servers():
    base = {r.name: r.inputs for r in stack().of_type(SERVER)}
    changed = stack(
        domains=["example.org", "example.net", "example.com"],
        users=[{"address": "alice@example.org"}, {"address": "dave@example.com"}],
        aliases=[{"address": "postmaster@example.com", "to": ["dave@example.com"]}],
        dkim={"selector": "s2"},
    )
    assert {r.name: r.inputs for r in changed.of_type(SERVER)} == base
    assert len(changed.of_type(ZONE)) == 3


def test_mail_volume_is_protected_and_attached_to_the_imap_host():
    run, s = stack(), settings_of()
    volume = run.one(VOLUME, "mail-store")
    assert volume.protect
    assert volume.inputs["deleteProtection"] is True
    assert volume.inputs["format"] == "ext4" and volume.inputs["automount"] is False
    assert volume.inputs["size"] == s.hetzner.mail_volume_gb
    attach = run.one(ATTACH, "mail-store")
    assert as_id(attach.inputs["serverId"]) == run.one(SERVER, "imap").id
    assert as_id(attach.inputs["volumeId"]) == volume.id


# --------------------------------------------------------------------------- DNS


def test_ptrs_name_the_forward_records_and_the_exact_ipv6_address():
    run = stack()
    ips = by_id(run, PRIMARY_IP)
    forward = {
        (f"{r.inputs['name']}.{r.inputs['zone']}".replace("@.", ""), r.inputs["type"]): [
            x["value"] for x in r.inputs["records"]
        ]
        for r in run.of_type(RRSET)
    }
    for ptr in run.of_type(RDNS):
        ip = ips[as_id(ptr.inputs["primaryIpId"])]
        assert ip.name == ptr.name  # mx1-ipv6 PTR sits on mx1's IPv6 primary IP
        n = {"mx1": 11, "imap": 12, "mx2": 13}[ptr.name.split("-")[0]]
        family = ip.inputs["type"]
        expected = f"198.51.100.{n}" if family == "ipv4" else f"2001:db8:{n}::1"
        assert ptr.inputs["ipAddress"] == expected
        rtype = "A" if family == "ipv4" else "AAAA"
        assert forward[(ptr.inputs["dnsPtr"], rtype)] == [expected]
        assert ptr.inputs["dnsPtr"] == f"{ptr.name.split('-')[0]}.example.org"


def test_rrsets_are_exactly_the_dns_module_records():
    run, s = stack(), settings_of()
    want = {(r.zone, r.name, r.type): (r.ttl, sorted(r.values)) for r in dns.records(s, _addresses(run), _dkim(s))}
    got = {
        (r.inputs["zone"], r.inputs["name"], r.inputs["type"]): (
            r.inputs["ttl"],
            sorted(x["value"] for x in r.inputs["records"]),
        )
        for r in run.of_type(RRSET)
    }
    assert got == want
    for d in s.domains:
        assert got[(d, "@", "MX")][1] == ["10 mx1.example.org.", "20 mx2.example.org."]
    dkim = got[("example.org", "mail._domainkey", "TXT")][1][0]
    assert dns.txt_text(dkim) == dns.dkim_text(_dkim(s)["example.org"])


def test_zones_are_primary_and_rrsets_depend_on_their_zone():
    run = stack()
    zones = {r.name: r for r in run.of_type(ZONE)}
    assert set(zones) == {"example.org", "example.net"}
    for z in zones.values():
        assert z.inputs["mode"] == "primary" and z.inputs["ttl"] == 3600
    for r in run.of_type(RRSET):
        assert zones[r.inputs["zone"]].urn in r.dependencies
    assert run.outputs["nameservers"]["example.org"]
    assert "zoneFile" not in run.outputs


def test_unmanaged_zone_declares_no_dns_resources_and_outputs_zone_files():
    run = stack(dns={"manageZone": False, "ttl": 3600})
    assert not run.of_type(ZONE) and not run.of_type(RRSET)
    files = run.outputs["zoneFile"]
    assert set(files) == {"example.org", "example.net"}
    assert "IN MX 10 mx1.example.org." in files["example.org"]
    assert "IN MX 10 mx1.example.org." in files["example.net"]
    # The other DNS host keeps its own SOA and NS; Hetzner's must not leak in.
    assert (
        "IN SOA" not in files["example.org"]
        and "IN NS" not in files["example.org"]
        and "hetzner" not in files["example.org"].lower()
    )
    assert "zoneFile" in run.outputs["nextSteps"] and "delegate" not in run.outputs["nextSteps"]
    assert run.outputs["nameservers"] == {}
    # PTRs are still the stack's: they live on its IPs, not in the zone.
    assert len(run.of_type(RDNS)) == 6


# --------------------------------------------------------------------------- firewall


def test_firewall_rules_follow_the_firewall_module_per_role():
    run, s = stack(), settings_of()
    for role, host in H.hosts(s).items():
        rules = run.one(FIREWALL, role).inputs["rules"]
        want = firewall.hcloud_rules(s, host)
        assert len(rules) == len(want)
        for got, rule in zip(rules, want):
            assert (got["direction"], got["protocol"], got.get("port")) == (rule.direction, rule.protocol, rule.port)
            assert got.get("sourceIps", []) == list(rule.source_ips)
        inbound = {(r["protocol"], r.get("port")): r.get("sourceIps") for r in rules if r["direction"] == "in"}
        assert inbound[("tcp", "22")] == list(s.admin.ssh_cidrs)
        assert (("tcp", "25") in inbound) == (host.runs(H.MX) or host.runs(H.BACKUP_MX))
        assert ("tcp", "24") not in inbound and ("tcp", "5432") not in inbound


# --------------------------------------------------------------------------- deploy steps


def test_deploy_steps_are_secret_ordered_and_wait_for_dns():
    run, s = stack(), settings_of()
    commands = {r.name: r for r in run.of_type(COMMAND) if not r.name.startswith("host-key-")}
    plan = deploy.plan(s)
    assert set(commands) == {p.name for p in plan}
    rrsets = {r.urn for r in run.of_type(RRSET)}
    addresses = _addresses(run)
    for step in plan:
        c = commands[step.name]
        assert {"stdin", "connection"} <= c.secret_inputs
        assert c.inputs["stdin"].startswith("#!/bin/bash\n")
        assert f"STEP={step.name}\n" in c.inputs["stdin"]
        assert c.inputs["logging"] == "stdoutAndStderr"
        assert {"stdout", "stderr"} <= set(c.additional_secret_outputs)
        conn = c.inputs["connection"]
        assert conn["host"] == addresses[step.host].ipv4 and conn["user"] == "root"
        assert "PRIVATE KEY" in conn["privateKey"]
        assert run.one(SERVER, step.host).urn in c.dependencies
        assert run.one(SERVER, step.host).id in c.inputs["triggers"]
        for dep in step.depends_on:
            assert commands[dep].urn in c.dependencies
        assert (rrsets <= set(c.dependencies)) == step.needs_dns
    assert "user-data" not in json.dumps([c.inputs["create"] for c in commands.values()])


def test_deploy_steps_pin_the_host_key_learned_once_per_server():
    """Every step's connection carries the key its server's host-key-<role> command read;
    that command reruns only for a new server, never for a changed command."""
    run, s = stack(), settings_of()
    for role in ("mx1", "imap", "mx2"):
        learn = run.one(COMMAND, f"host-key-{role}")
        assert learn.inputs["create"] == ssh.HOST_KEY_COMMAND
        assert learn.inputs["triggers"] == [run.one(SERVER, role).id]
        assert "stdin" not in learn.inputs  # the unpinned first connection carries no secret
    for step in deploy.plan(s):
        conn = run.one(COMMAND, step.name).inputs["connection"]
        assert conn["hostKey"] == f"ssh-ed25519 {MOCK_HOST_KEY}{step.host}", step.name


def test_replica_steps_rerun_when_the_primary_server_is_rebuilt():
    run = stack()
    replica = run.one(COMMAND, "postgres-replica-imap")
    assert run.one(SERVER, "mx1").id in replica.inputs["triggers"]
    assert run.one(SERVER, "imap").id in replica.inputs["triggers"]


def test_imap_host_steps_wait_for_the_mail_volume():
    run, s = stack(), settings_of()
    attach = run.one(ATTACH, "mail-store").urn
    for step in deploy.plan(s):
        assert (attach in run.one(COMMAND, step.name).dependencies) == (step.host == "imap")


# --------------------------------------------------------------------------- topology and outputs


def test_single_topology_is_one_server_with_everything():
    run, s = stack(topology="single"), settings_of(topology="single")
    assert [r.name for r in run.of_type(SERVER)] == ["mx1"]
    assert len(run.of_type(PRIMARY_IP)) == 2 and len(run.of_type(RDNS)) == 2
    assert as_id(run.one(ATTACH, "mail-store").inputs["serverId"]) == run.one(SERVER, "mx1").id
    assert {c.name for c in run.of_type(COMMAND)} == {p.name for p in deploy.plan(s)} | {"host-key-mx1"}
    assert not [c for c in run.of_type(COMMAND) if c.name.startswith("postgres-replica")]
    mx = [
        r
        for r in run.of_type(RRSET)
        if (r.inputs["zone"], r.inputs["name"], r.inputs["type"]) == ("example.org", "@", "MX")
    ]
    assert [x["value"] for x in mx[0].inputs["records"]] == ["10 mx1.example.org."]
    assert set(run.outputs["addresses"]) == {"mx1"}


def test_outputs_are_complete_and_only_secrets_are_secret():
    run, s = stack(), settings_of()
    assert run.secret_outputs == {"initialPasswords"}
    assert set(run.outputs["initialPasswords"]) == {u.address for u in s.users}
    assert run.outputs["addresses"]["mx1"] == {"ipv4": "198.51.100.11", "ipv6": "2001:db8:11::1"}
    assert run.outputs["hostnames"]["imap"] == "imap.example.org"
    assert run.outputs["dnsRecords"] == dns.records_table(dns.records(s, _addresses(run), _dkim(s)))
    steps = run.outputs["nextSteps"]
    assert "25" in steps and "465" in steps and "initialPasswords" in steps
    assert "hydrogen.ns.hetzner.com." in steps
    assert run.outputs["deployPublicKey"].startswith("ssh-ed25519 ")


def test_invalid_config_stops_before_any_resource():
    config, secret_keys = example_config(
        topology="single", admin={"sshKeys": ["ssh-ed25519 AAAAnotakey"], "sshCidrs": []}
    )
    monitors = []
    with pytest.raises(SettingsError) as err:
        run_program(config, secret_keys, monitors=monitors)
    keys = [p.split(":", 2)[1].split(" ")[0] for p in err.value.problems]
    assert any(p.startswith("mailstack:admin.sshKeys[0]:") for p in err.value.problems), keys
    assert any(p.startswith("mailstack:admin.sshCidrs:") for p in err.value.problems), keys
    assert monitors and monitors[0].registered == []
    # Settings are checked offline, before anything is asked of Hetzner.
    assert monitors[0].mocks.invokes == []


def test_missing_token_stops_the_program_before_any_resource(monkeypatch):
    monkeypatch.delenv("HCLOUD_TOKEN", raising=False)
    config, _ = example_config()
    del config["hcloud:token"]
    monitors = []
    with pytest.raises(SettingsError) as err:
        run_program(config, (), monitors=monitors)
    assert err.value.problems[0].startswith("hcloud:token: is not set")
    assert monitors and monitors[0].registered == []


# --------------------------------------------------------------------------- snapshot


def test_resource_graph_matches_snapshot():
    path = SNAPSHOT_DIR / "dev.json"
    current = snapshot_text(stack())
    stored = path.read_text() if path.exists() else ""
    if current != stored:
        diff = "".join(
            list(difflib.unified_diff(stored.splitlines(True), current.splitlines(True), str(path), "program"))[:60]
        )
        pytest.fail(
            f"the resource graph changed and {path.relative_to(SNAPSHOT_DIR.parent.parent)} is out of date.\n"
            "If the change is intended, run `make snapshot` and commit the reviewed diff.\n" + diff
        )


def test_stack_without_generated_passwords_outputs_an_empty_secret_mapping():
    run, _ = _run(
        _freeze({"users": [{"address": "ops@example.org", "passwordHash": TEST_HASH}], "aliases": []}),
        ("mailstack:users",),
    )
    assert run.outputs["initialPasswords"] == {}
    assert "initialPasswords" in run.secret_outputs
    assert not [r for r in run.of_type(PASSWORD) if r.name.startswith("user-")]


# --------------------------------------------------------------------------- Hetzner catalogue

GET_TYPE = "hcloud:index/getServerType:getServerType"


def _refused(preview: bool = True, **overrides) -> tuple[list[str], list]:
    """The problems of a stack the catalogue lookup refuses, and what was registered."""
    config, secret_keys = example_config(**overrides)
    monitors = []
    with pytest.raises(SettingsError) as err:
        run_program(config, secret_keys, monitors=monitors, preview=preview)
    return err.value.problems, monitors[0].registered


def _hetzner(**changes) -> dict:
    """The example stack's `mailstack:hetzner` with `changes` (roles: their server type)."""
    hz = load_settings(*example_config()).hetzner.model_dump(by_alias=True)
    for key, value in changes.items():
        if key in H.ROLES:
            hz["serverTypes"][key] = value
        else:
            hz[key] = value
    return hz


def test_current_server_type_location_and_image_are_looked_up_in_hetzners_catalogue():
    run = stack()
    invokes = run.mocks.invokes
    assert (GET_TYPE, {"name": "cx23"}) in invokes
    assert ("hcloud:index/getLocation:getLocation", {"name": "fsn1"}) in invokes
    assert ("hcloud:index/getImage:getImage", {"name": "debian-12", "withArchitecture": "x86"}) in invokes
    # The full list is only fetched to suggest replacements for a refused type.
    assert not [t for t, _ in invokes if t.endswith("getServerTypes")]
    # The subnet's network zone is the API's answer for the location, not a local table.
    subnet = run.one("hcloud:index/networkSubnet:NetworkSubnet", "mailstack-dev")
    assert subnet.inputs["networkZone"] == MOCK_LOCATIONS["fsn1"]


def test_retired_server_type_stops_preview_with_a_settings_error():
    problems, registered = _refused(hetzner=_hetzner(mx2="cx22"))
    assert problems == [problems[0]] and registered == []
    msg = problems[0]
    assert msg.startswith("mailstack:hetzner.serverTypes.mx2: 'cx22' is deprecated by Hetzner in 'fsn1'")
    assert "announced 2025-10-16, unavailable after 2026-01-01" in msg
    # The fix comes from the live catalogue: current x86 types offered in fsn1.
    assert "e.g. cpx22, cx23, cx33" in msg and "cax11" not in msg


def test_unknown_server_type_stops_preview_naming_the_providers_answer():
    problems, registered = _refused(hetzner=_hetzner(imap="cx99"))
    assert registered == []
    assert len(problems) == 1
    assert problems[0].startswith("mailstack:hetzner.serverTypes.imap: 'cx99' is not a Hetzner server type")
    assert "no Server Type found with name cx99" in problems[0] and "cx23" in problems[0]


def test_server_type_must_be_offered_in_the_location():
    problems, _ = _refused(hetzner=_hetzner(location="ash"))
    assert len(problems) == 3  # cx23 for mx1, imap and mx2
    assert problems[0].startswith("mailstack:hetzner.serverTypes.mx1: 'cx23' is not offered in 'ash'")
    assert "e.g. cpx22" in problems[0] and "mailstack:hetzner.location" in problems[0]


def test_unknown_location_is_refused_before_any_resource():
    problems, registered = _refused(hetzner=_hetzner(location="mars"))
    assert registered == []
    assert problems == [
        p for p in problems if p.startswith("mailstack:hetzner.location: 'mars' is not a Hetzner location")
    ]
    assert "no Location found with name mars" in problems[0] and "'fsn1'" in problems[0]


def test_arm_server_type_needs_an_arm_image(monkeypatch):
    run = stack(hetzner=_hetzner(mx2="cax11"))
    assert run.one(SERVER, "mx2").inputs["serverType"] == "cax11"
    assert ("hcloud:index/getImage:getImage", {"name": "debian-12", "withArchitecture": "arm"}) in run.mocks.invokes
    monkeypatch.setattr(pulumi_mocks, "MOCK_IMAGES", {("debian-12", "x86")})
    problems, _ = _refused(hetzner=_hetzner(mx2="cax11"))
    assert problems[0].startswith(
        "mailstack:hetzner.image: 'debian-12' is not available for arm servers such as 'cax11'"
    )


GET_BOX_TYPE = "hcloud:index/getStorageBoxType:getStorageBoxType"


def _backup(**storage_box) -> dict:
    return {"target": "storagebox", "storageBox": storage_box}


def test_storage_box_type_is_looked_up_in_hetzners_catalogue():
    run = stack(backup=_backup(type="bx21"))
    assert (GET_BOX_TYPE, {"name": "bx21"}) in run.mocks.invokes
    assert run.one(STORAGE_BOX, "mailstack-dev-backup").inputs["storageBoxType"] == "bx21"
    # No Storage Box, no look-up.
    assert not [t for t, _ in stack(backup={"target": "none"}).mocks.invokes if "StorageBox" in t]


def test_unknown_or_retired_storage_box_type_stops_preview_with_current_ones_named():
    problems, registered = _refused(backup=_backup(type="bx99"))
    assert registered == [] and len(problems) == 1
    assert problems[0].startswith("mailstack:backup.storageBox.type: 'bx99' is not a Hetzner Storage Box type")
    assert "no Storage Box Type found with name bx99" in problems[0]
    assert "e.g. bx11, bx21, bx31" in problems[0]
    problems, _ = _refused(backup=_backup(type="bx10"))
    assert problems[0].startswith("mailstack:backup.storageBox.type: 'bx10' is deprecated by Hetzner")
    assert "unavailable after 2026-01-01" in problems[0] and "bx10," not in problems[0]


def test_storage_box_location_named_in_the_settings_is_looked_up():
    run = stack(backup=_backup(location="hel1"))
    assert ("hcloud:index/getLocation:getLocation", {"name": "hel1"}) in run.mocks.invokes
    assert run.one(STORAGE_BOX, "mailstack-dev-backup").inputs["location"] == "hel1"
    problems, registered = _refused(backup=_backup(location="mars"))
    assert registered == []
    assert problems == [
        "mailstack:backup.storageBox.location: 'mars' is not a Hetzner location "
        "(the API says: invoke of hcloud:index/getLocation:getLocation failed: no Location "
        "found with name mars); use one from "
        "`hcloud location list` that offers Storage Boxes, e.g. 'fsn1', or leave "
        "it out (the servers' location where boxes exist)"
    ]


def test_single_topology_looks_up_only_the_server_it_runs():
    # imap and mx2 run nowhere in `single`; their types are not asked for.
    run = stack(topology="single", hetzner=_hetzner(imap="cx99", mx2="cx22"))
    assert [a["name"] for t, a in run.mocks.invokes if t == GET_TYPE] == ["cx23"]
    assert [r.inputs["serverType"] for r in run.of_type(SERVER)] == ["cx23"]


# --------------------------------------------------------------------------- what `pulumi up` needs


@pytest.mark.parametrize("topology", ["ha", "single"])
def test_example_stack_previews_deployable(topology):
    """The example stack and its `single` variant, as a preview: current server types,
    real SSH keys, no unused primary IP attribute, state kept on the stateful resources."""
    config, secret_keys = example_config(topology=topology)
    run = run_program(config, secret_keys, preview=True)
    location = settings_of(topology=topology).hetzner.location
    servers = run.of_type(SERVER)
    assert servers
    for server in servers:
        offer = MOCK_SERVER_TYPES[server.inputs["serverType"]]["locations"]
        assert [o for o in offer if o["name"] == location and not o["isDeprecated"]], server.name
    admin_keys = [r for r in run.of_type("hcloud:index/sshKey:SshKey") if r.name.startswith("admin-")]
    assert admin_keys
    for key in admin_keys:
        load_ssh_public_key(key.inputs["publicKey"].encode())  # raises on a fake key
    ips = run.of_type(PRIMARY_IP)
    assert len(ips) == 2 * len(servers)
    for ip in ips:
        assert ("assigneeType" in ip.inputs) == ("assigneeId" in ip.inputs)
    boxes = run.of_type(STORAGE_BOX)
    assert len(boxes) == 1
    for r in [*ips, run.one(VOLUME, "mail-store"), *boxes]:
        assert r.protect and r.retain_on_delete, r.name
    zones = run.of_type(ZONE)
    assert zones and all(z.protect for z in zones)
    # Nothing else is protected: servers, records and steps must stay replaceable.
    protected = {r.type for r in run.resources if r.protect}
    assert protected == {PRIMARY_IP, VOLUME, ZONE, STORAGE_BOX}


def test_server_type_out_of_capacity_in_the_location_is_refused(monkeypatch):
    types = {name: dict(t) for name, t in MOCK_SERVER_TYPES.items()}
    types["cx23"]["locations"] = [dict(o, available=o["name"] != "fsn1") for o in types["cx23"]["locations"]]
    monkeypatch.setattr(pulumi_mocks, "MOCK_SERVER_TYPES", types)
    problems, _ = _refused(hetzner=_hetzner(imap="cx33"))
    assert [p.split(":", 2)[1].split(" ")[0] for p in problems] == [
        "hetzner.serverTypes.mx1",
        "hetzner.serverTypes.mx2",
    ]
    assert "'cx23' is temporarily unavailable in 'fsn1'" in problems[0]
    assert "e.g. cpx22, cx33" in problems[0]  # not cx23 itself


# --------------------------------------------------------------------------- DKIM rotation

_ROTATION = {"selector": "mail", "rotationDays": 90, "publishDays": 7, "graceDays": 7, "start": "2027-01-01"}


@pytest.mark.parametrize(
    "now,keys",
    [
        # publish: generation 1's key and record appear beside the key that signs
        ("2026-12-26T00:00:00Z", {"mail": "dkim-{d}", "mail-g1": "dkim-{d}-g1"}),
        # grace: g1 signs, generation 0 (the pre-rotation key, same resource) still published
        ("2027-01-02T00:00:00Z", {"mail": "dkim-{d}", "mail-g1": "dkim-{d}-g1"}),
        # after the grace: generation 0's key leaves the state with its record
        ("2027-01-09T00:00:00Z", {"mail-g1": "dkim-{d}-g1"}),
    ],
)
def test_dkim_keys_and_records_follow_the_rotation(now, keys):
    assert "dkimSchedule" not in stack().outputs  # only with rotation
    run, s = stack(dkim={**_ROTATION, "now": now}), settings_of(dkim={**_ROTATION, "now": now})
    domains = s.domains
    names = {r.name for r in run.of_type(KEY) if r.name.startswith("dkim-")}
    assert names == {n.format(d=d) for n in keys.values() for d in domains}
    rrsets = {r.name for r in run.of_type(RRSET) if "_domainkey" in r.name}
    assert rrsets == {f"{d}/{sel}._domainkey/TXT" for sel in keys for d in domains}
    table = {
        (r["zone"], r["name"]): dns.txt_text(r["values"][0])
        for r in run.outputs["dnsRecords"]
        if "_domainkey" in r["name"]
    }
    assert table == {
        (d, f"{sel}._domainkey"): dns.dkim_text(
            dns.dkim_public_value(_keypair("RSA", name.format(d=d))["publicKeyPem"])
        )
        for sel, name in keys.items()
        for d in domains
    }
    sched = run.outputs["dkimSchedule"]
    assert (sched["now"], sched["published"]) == (now.replace("Z", "+00:00"), sorted(keys))
