"""Runs the Pulumi program against `pulumi.runtime.set_mocks` and records what it declares.

The mocks stand in for the engine and the providers only: every resource's inputs, options
and dependencies are captured as the engine would receive them, and providers answer with
deterministic IDs and the provider-computed outputs the program reads (IP addresses, zone
nameservers, generated passwords and keys), and the Hetzner catalogue data sources with a
small fixed catalogue. Generated secrets carry recognisable markers
so a test can look for them anywhere they must not be.
"""

from __future__ import annotations

import hashlib
import json
import random
import runpy
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parent.parent
SECRET_MARK = "MOCKSECRET"
HOST_NUMBER = {"mx1": 11, "imap": 12, "mx2": 13}
MOCK_NAMESERVERS = ["hydrogen.ns.hetzner.com.", "oxygen.ns.hetzner.com.", "helium.ns.hetzner.de."]


# Base64 body of the mock servers' ed25519 host keys (the role's last letters appended).
MOCK_HOST_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIMockHostKey"


def mock_id(typ: str, name: str) -> str:
    # hcloud IDs are integers; derive them from the name so they are stable across runs.
    return str(zlib.crc32(f"{typ}::{name}".encode()) % 900_000_000 + 100_000_000)


def unwrap(value: Any) -> tuple[Any, bool]:
    """(value with every secret envelope removed, whether it held any secret)."""
    if rpc.is_rpc_secret(value):
        inner, _ = unwrap(rpc.unwrap_rpc_secret(value))
        return inner, True
    if isinstance(value, dict):
        out, secret = {}, False
        for k, v in value.items():
            out[k], s = unwrap(v)
            secret |= s
        return out, secret
    if isinstance(value, list):
        items = [unwrap(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def _prime(rng: random.Random, bits: int) -> int:
    while True:
        n = rng.getrandbits(bits) | (3 << (bits - 2)) | 1  # top two bits: a 2048-bit product
        if n % 65537 != 1 and _probably_prime(n, rng):
            return n


def _probably_prime(n: int, rng: random.Random) -> bool:
    for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(8):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@cache
def _keypair(algorithm: str, name: str) -> dict[str, str]:
    """Keys derived from the resource name, so snapshots and DKIM records are stable."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    seed = hashlib.sha256(f"mailstack-test-key:{name}".encode()).digest()
    if algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    else:
        rng = random.Random(seed)
        p, q = _prime(rng, 1024), _prime(rng, 1024)
        e = 65537
        d = pow(e, -1, (p - 1) * (q - 1))
        key = rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
        ).private_key()
        pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption())
    pub = key.public_key()
    return {
        "privateKeyPem": pem.decode(),
        "privateKeyOpenssh": key.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()
        ).decode(),
        "publicKeyPem": pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": pub.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode() + "\n",
    }


def _bcrypt_like(name: str) -> str:
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    seed = zlib.crc32(name.encode())
    tail = "".join(alphabet[(seed >> (i % 24)) % 64 ^ i % 64] for i in range(53))
    return "$2a$10$" + (SECRET_MARK + "HASH" + tail)[:53]


# What Hetzner's API answers to the catalogue data sources, shaped as the provider returns
# it: a current type, one available only in some locations, an Arm type, and a type that
# was retired in January 2026. Test data for the engine boundary, not a catalogue the
# program relies on.
EU = ("fsn1", "nbg1", "hel1")
RETIRED = {"deprecationAnnounced": "2025-10-16T09:00:00Z", "unavailableAfter": "2026-01-01T00:00:00Z"}
MOCK_LOCATIONS = {
    "fsn1": "eu-central",
    "nbg1": "eu-central",
    "hel1": "eu-central",
    "ash": "us-east",
    "hil": "us-west",
    "sin": "ap-southeast",
}


def _server_type(name: str, arch: str, cores: int, memory: float, locations, retired=False):
    dates = RETIRED if retired else {"deprecationAnnounced": "", "unavailableAfter": ""}
    return {
        "id": zlib.crc32(name.encode()) % 1000,
        "name": name,
        "architecture": arch,
        "cores": cores,
        "memory": memory,
        "disk": 40,
        "cpuType": "shared",
        "category": "x",
        "storageType": "local",
        "description": name.upper(),
        "includedTraffic": 0,
        "isDeprecated": retired,
        **dates,
        "locations": [
            {"id": i, "name": loc, "available": True, "recommended": not retired, "isDeprecated": retired, **dates}
            for i, loc in enumerate(locations)
        ],
    }


MOCK_SERVER_TYPES = {
    t["name"]: t
    for t in (
        _server_type("cx23", "x86", 2, 4, EU),
        _server_type("cx33", "x86", 4, 8, EU),
        _server_type("cpx22", "x86", 2, 4, tuple(MOCK_LOCATIONS)),
        _server_type("cax11", "arm", 2, 4, EU),
        _server_type("cx22", "x86", 2, 4, EU, retired=True),
    )
}
MOCK_IMAGES = {("debian-12", "x86"), ("debian-12", "arm")}


def _box_type(name: str, size_tb: int, retired=False):
    dates = RETIRED if retired else {"deprecationAnnounced": "", "unavailableAfter": ""}
    return {
        "id": zlib.crc32(name.encode()) % 1000,
        "name": name,
        "description": name.upper(),
        "size": size_tb << 40,
        "snapshotLimit": 10,
        "automaticSnapshotLimit": 10,
        "subaccountsLimit": 100,
        "isDeprecated": retired,
        **dates,
    }


# Storage Box types: current ones and a retired one (made up for the test).
MOCK_STORAGE_BOX_TYPES = {
    t["name"]: t
    for t in (
        _box_type("bx11", 1),
        _box_type("bx21", 5),
        _box_type("bx31", 10),
        _box_type("bx10", 1, retired=True),
    )
}


class CatalogueMiss(grpc.RpcError):
    """How the engine reports a data source that failed (a name Hetzner doesn't know): a
    gRPC error from the monitor, which the SDK raises from the invoke call."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return self._details


class StackMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # what a provider would generate, by resource name
        self.invokes: list[tuple[str, dict]] = []

    def call(self, args: pulumi.runtime.MockCallArgs):
        # A dict is the invoke's result; CatalogueMiss is how the engine refuses one.
        token, given = args.token, {k: v for k, v in args.args.items() if v is not None}
        self.invokes.append((token, given))
        if token == "hcloud:index/getServerType:getServerType":
            if given.get("name") not in MOCK_SERVER_TYPES:
                raise CatalogueMiss(f"no Server Type found with name {given.get('name')}")
            return MOCK_SERVER_TYPES[given["name"]]
        if token == "hcloud:index/getServerTypes:getServerTypes":
            return {"id": "types", "serverTypes": list(MOCK_SERVER_TYPES.values())}
        if token == "hcloud:index/getLocation:getLocation":
            name = given.get("name")
            if name not in MOCK_LOCATIONS:
                raise CatalogueMiss(f"no Location found with name {name}")
            return {
                "id": 1,
                "name": name,
                "networkZone": MOCK_LOCATIONS[name],
                "city": "x",
                "country": "x",
                "description": name,
                "latitude": 0,
                "longitude": 0,
            }
        if token == "hcloud:index/getStorageBoxType:getStorageBoxType":
            if given.get("name") not in MOCK_STORAGE_BOX_TYPES:
                raise CatalogueMiss(f"no Storage Box Type found with name {given.get('name')}")
            return MOCK_STORAGE_BOX_TYPES[given["name"]]
        if token == "hcloud:index/getStorageBoxTypes:getStorageBoxTypes":
            return {"id": "types", "storageBoxTypes": list(MOCK_STORAGE_BOX_TYPES.values())}
        if token == "hcloud:index/getImage:getImage":
            key = (given.get("name"), given.get("withArchitecture", "x86"))
            if key not in MOCK_IMAGES:
                raise CatalogueMiss(f"no Image found matching the selection {key}")
            return {
                "id": 114690387,
                "name": key[0],
                "architecture": key[1],
                "type": "system",
                "osFlavor": "debian",
                "osVersion": "12",
                "deprecated": "",
            }
        raise AssertionError(f"the program invoked {token}, which the mocks don't answer")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs, _ = unwrap(args.inputs)
        out = dict(inputs)
        typ, name = args.typ, args.name
        if typ == "hcloud:index/primaryIp:PrimaryIp":
            n = HOST_NUMBER.get(name.split("-")[0], 99)
            if inputs["type"] == "ipv4":
                out["ipAddress"] = f"198.51.100.{n}"
            else:
                # Hetzner gives the /64's first address; the server uses ::1 of it.
                out["ipAddress"] = f"2001:db8:{n}::"
                out["ipNetwork"] = f"2001:db8:{n}::/64"
        elif typ == "hcloud:index/server:Server":
            out.update(status="running", ipv4Address="", ipv6Address="")
        elif typ == "hcloud:index/zone:Zone":
            out["authoritativeNameservers"] = {"assigneds": MOCK_NAMESERVERS}
        elif typ == "random:index/randomPassword:RandomPassword":
            out["result"] = f"{SECRET_MARK}-{name}-pw"
            out["bcryptHash"] = _bcrypt_like(name)
            self.secrets[f"{name}.result"] = out["result"]
            self.secrets[f"{name}.bcryptHash"] = out["bcryptHash"]
        elif typ == "tls:index/privateKey:PrivateKey":
            keys = _keypair(inputs.get("algorithm", "RSA"), name)
            out.update(keys)
            self.secrets[f"{name}.privateKeyPem"] = keys["privateKeyPem"]
            self.secrets[f"{name}.privateKeyOpenssh"] = keys["privateKeyOpenssh"]
        elif typ == "hcloud:index/storageBox:StorageBox":
            out.update(server="u123456.your-storagebox.de", username="u123456")
        elif typ == "command:remote:Command":
            # host-key-<role> reads the server's host key (mailstack/ssh.py).
            stdout = (
                f"ssh-ed25519 {MOCK_HOST_KEY}{name.rsplit('-', 1)[1]} root@{name}\n"
                if name.startswith("host-key-")
                else ""
            )
            out.update(stdout=stdout, stderr="")
        return mock_id(typ, name), out

    def secret_fragments(self) -> list[str]:
        """Pieces of every generated secret that must never show up in clear text."""
        frags = []
        for v in self.secrets.values():
            if "PRIVATE KEY" in v:
                body = [line for line in v.splitlines() if line and "-----" not in line]
                frags.append(body[len(body) // 2])
            else:
                frags.append(v)
        return frags


@dataclass
class Registered:
    type: str
    name: str
    urn: str
    id: str
    parent: str
    inputs: dict
    secret_inputs: set[str]
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    ignore_changes: list[str]
    additional_secret_outputs: list[str]
    custom: bool


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: StackMocks):
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            raw = rpc.deserialize_properties(request.object)
            inputs, _ = unwrap(raw)
            self.registered.append(
                Registered(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    id=response.id,
                    parent=request.parent,
                    inputs=inputs,
                    secret_inputs={k for k, v in raw.items() if unwrap(v)[1]},
                    dependencies=sorted(set(request.dependencies)),
                    property_dependencies={k: sorted(set(v.urns)) for k, v in request.propertyDependencies.items()},
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    ignore_changes=list(request.ignoreChanges),
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    custom=bool(request.custom),
                )
            )
        return response


@dataclass
class Run:
    resources: list[Registered]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    mocks: StackMocks
    by_urn: dict[str, Registered] = field(default_factory=dict)

    def __post_init__(self):
        self.by_urn = {r.urn: r for r in self.resources}

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str) -> Registered:
        found = [r for r in self.of_type(typ) if r.name == name]
        assert len(found) == 1, f"{typ} {name!r}: {len(found)} registered"
        return found[0]


def run_program(
    config: dict[str, str],
    secret_keys: tuple[str, ...] = (),
    stack: str = "dev",
    monitors: list | None = None,
    preview: bool = False,
) -> Run:
    """Run __main__.py under mocks with `config` as the stack config (as `pulumi preview`
    with `preview=True`). `monitors`, if given, receives the recording monitor even when
    the program raises."""
    mocks = StackMocks()
    monitor = RecordingMonitor(mocks)
    if monitors is not None:
        monitors.append(monitor)
    pulumi.runtime.set_mocks(mocks, project="mailstack", stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    results: dict[str, Any] = {}
    secret: set[str] = set()

    @pulumi.runtime.test
    def program():
        module = runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        outs = module["stack"].outputs

        def record(key, value, is_secret):
            results[key] = value
            if is_secret:
                secret.add(key)

        collected = []
        for key, value in outs.items():
            o = pulumi.Output.from_input(value)
            collected.append(pulumi.Output.all(o, o.is_secret()).apply(lambda v, key=key: record(key, v[0], v[1])))
        return pulumi.Output.all(*collected)

    program()
    return Run(list(monitor.registered), results, secret, mocks)


# --------------------------------------------------------------------------- snapshot

SNAPSHOT_DIR = ROOT / "tests" / "snapshots"


def _short(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<parent types$>type::name -> type::name
    parts = urn.split("::")
    return f"{parts[2].split('$')[-1]}::{parts[3]}" if len(parts) >= 4 else urn


def _normalise(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v, refs) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_normalise(v, refs) for v in value]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, str)) and not isinstance(value, bool) and str(value) in refs:
        return f"<id of {refs[str(value)]}>"
    return value


def snapshot(run: Run) -> dict:
    """The resource graph as sorted, diffable data: IDs become references, secrets
    `[secret]`, user-data a digest."""
    refs = {r.id: _short(r.urn) for r in run.resources if r.id}
    resources = {}
    for r in run.resources:
        inputs = {}
        for key, value in r.inputs.items():
            if key in r.secret_inputs:
                inputs[key] = "[secret]"
            elif key == "userData":
                inputs[key] = {"sha256": hashlib.sha256(value.encode()).hexdigest(), "bytes": len(value.encode())}
            else:
                inputs[key] = _normalise(value, refs)
        entry: dict[str, Any] = {"inputs": inputs}
        if r.parent:
            entry["parent"] = _short(r.parent)
        deps = sorted(
            {_short(u) for u in r.dependencies} - {_short(r.parent)}
            if r.parent
            else {_short(u) for u in r.dependencies}
        )
        if deps:
            entry["dependsOn"] = deps
        options = {
            "protect": r.protect,
            "retainOnDelete": r.retain_on_delete,
            "deleteBeforeReplace": r.delete_before_replace,
            "ignoreChanges": sorted(r.ignore_changes),
            "additionalSecretOutputs": sorted(r.additional_secret_outputs),
        }
        options = {k: v for k, v in options.items() if v}
        if options:
            entry["options"] = options
        resources[_short(r.urn)] = entry
    outputs = {k: "[secret]" if k in run.secret_outputs else _normalise(v, refs) for k, v in run.outputs.items()}
    return {"resources": dict(sorted(resources.items())), "outputs": dict(sorted(outputs.items()))}


def snapshot_text(run: Run) -> str:
    return json.dumps(snapshot(run), indent=2, sort_keys=True) + "\n"


def example_config(stack: str = "dev", **overrides) -> tuple[dict[str, str], tuple[str, ...]]:
    """A stack file's config as the engine hands it over, plus a (fake) provider token."""
    import yaml

    raw = yaml.safe_load((ROOT / "config" / f"Pulumi.{stack}.yaml").read_text())["config"]
    raw.update({f"mailstack:{k}": v for k, v in overrides.items()})
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    config["hcloud:token"] = SECRET_MARK + "T" * (64 - len(SECRET_MARK))  # token-shaped
    return config, ("hcloud:token",)
