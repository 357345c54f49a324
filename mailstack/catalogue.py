"""The stack's server types, location, image and Storage Box type checked against
Hetzner's catalogue.

The catalogue changes (cx22-cx52 and cpx11-cpx51 were deprecated on 2025-10-16 and
removed in January 2026), so no list of it is kept here. `components/catalogue.py` asks
the provider's data sources at preview time and hands the answers over as the plain
values below; this module only decides, so it is tested without Pulumi. Problems read
like settings problems (key, value, fix) and stop the program before any resource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .hosts import Host
from .settings import DEFAULT_SERVER_TYPE, NAMESPACE, Hetzner, Settings

HETZNER_KEY = f"{NAMESPACE}:hetzner"
# Hetzner's CLI lists what the API offers; named in every fix.
LIST_TYPES = "`hcloud server-type list`"
LIST_LOCATIONS = "`hcloud location list`"
LIST_BOX_TYPES = "`hcloud storage-box-type list`"
BOX_KEY = f"{NAMESPACE}:backup.storageBox"
SUGGESTIONS = 6


@dataclass(frozen=True)
class Missing:
    """A lookup the API answered with an error (unknown name, or no access)."""

    reason: str


@dataclass(frozen=True)
class Offer:
    """A server type in one location. Hetzner deprecates types per location (the type-wide
    deprecation fields are being phased out since 2025-09-24)."""

    location: str
    available: bool = True
    deprecated: bool = False
    deprecation_announced: str = ""
    unavailable_after: str = ""


@dataclass(frozen=True)
class ServerType:
    name: str
    architecture: str
    cores: int = 0
    memory_gb: float = 0
    offers: tuple[Offer, ...] = ()

    def offer(self, location: str) -> Offer | None:
        return next((o for o in self.offers if o.location == location), None)

    def usable_in(self, location: str) -> bool:
        offer = self.offer(location)
        return offer is not None and offer.available and not offer.deprecated


@dataclass(frozen=True)
class Location:
    name: str
    network_zone: str


@dataclass(frozen=True)
class Image:
    name: str
    architecture: str


@dataclass(frozen=True)
class StorageBoxType:
    name: str
    deprecated: bool = False
    deprecation_announced: str = ""
    unavailable_after: str = ""


@dataclass(frozen=True)
class Answers:
    """What the data sources said: server types by name, the location, images by
    architecture, and (only fetched when a type is refused) every type, for the fix.
    With backups on a Storage Box: its type, its location when the settings name one,
    and (only when the type is refused) every Storage Box type."""

    server_types: Mapping[str, ServerType | Missing]
    location: Location | Missing
    images: Mapping[str, Image | Missing]
    all_types: Sequence[ServerType] = ()
    storage_box_type: StorageBoxType | Missing | None = None
    storage_box_location: Location | Missing | None = None
    all_storage_box_types: Sequence[StorageBoxType] = ()


def server_types_in_use(settings: Settings, hosts: Mapping[str, Host]) -> dict[str, str]:
    """role -> server type, for the roles the topology runs (single: mx1 only)."""
    return {role: getattr(settings.hetzner.server_types, role) for role in hosts}


def _date(value: str) -> str:
    return value[:10] if value else "unknown"


def _suggest(location: str, architecture: str, all_types: Sequence[ServerType]) -> str:
    usable = sorted(
        (t for t in all_types if t.usable_in(location) and t.architecture == architecture),
        key=lambda t: (t.cores, t.memory_gb, t.name),
    )
    if usable:
        names = ", ".join(t.name for t in usable[:SUGGESTIONS])
        return f"use a current type offered in {location!r}, e.g. {names}"
    return f"use a current type offered in {location!r} (see {LIST_TYPES}), e.g. {DEFAULT_SERVER_TYPE!r}"


def problems(settings: Settings, hosts: Mapping[str, Host], answers: Answers) -> list[str]:
    """Every way the stack's Hetzner settings don't fit the catalogue, one line each."""
    hz: Hetzner = settings.hetzner
    p: list[str] = []
    loc = answers.location
    if isinstance(loc, Missing):
        default = Hetzner.model_fields["location"].default
        p.append(
            f"{HETZNER_KEY}.location: {hz.location!r} is not a Hetzner location "
            f"(the API says: {loc.reason}); use one from {LIST_LOCATIONS}, e.g. {default!r}"
        )
        # Offers can't be judged without a location; unknown types are still reported.
    for role, name in server_types_in_use(settings, hosts).items():
        key = f"{HETZNER_KEY}.serverTypes.{role}"
        st = answers.server_types[name]
        if isinstance(st, Missing):
            fix = _suggest(hz.location, "x86", answers.all_types)
            p.append(f"{key}: {name!r} is not a Hetzner server type (the API says: {st.reason}); {fix}")
            continue
        if isinstance(loc, Missing):
            continue
        fix = _suggest(hz.location, st.architecture, answers.all_types)
        offer = st.offer(hz.location)
        if offer is not None and offer.deprecated:
            p.append(
                f"{key}: {name!r} is deprecated by Hetzner in {hz.location!r} (announced "
                f"{_date(offer.deprecation_announced)}, unavailable after "
                f"{_date(offer.unavailable_after)}); {fix}"
            )
        elif offer is None:
            p.append(
                f"{key}: {name!r} is not offered in {hz.location!r}; {fix}, or choose another {HETZNER_KEY}.location"
            )
        elif not offer.available:
            p.append(f"{key}: {name!r} is temporarily unavailable in {hz.location!r}; {fix}, or try again later")
    seen: set[str] = set()
    for name in server_types_in_use(settings, hosts).values():
        st = answers.server_types[name]
        if isinstance(st, Missing) or st.architecture in seen:
            continue
        seen.add(st.architecture)
        image = answers.images.get(st.architecture)
        if isinstance(image, Missing):
            p.append(
                f"{HETZNER_KEY}.image: {hz.image!r} is not available for {st.architecture} "
                f"servers such as {name!r} (the API says: {image.reason}); "
                "use 'debian-12' or a server type of another architecture"
            )
    return p + storage_box_problems(settings, answers)


def _box_fix(all_types: Sequence[StorageBoxType]) -> str:
    current = sorted(t.name for t in all_types if not t.deprecated)
    if current:
        return f"use a current type, e.g. {', '.join(current[:SUGGESTIONS])}"
    return f"use a current type from {LIST_BOX_TYPES}"


def storage_box_problems(settings: Settings, answers: Answers) -> list[str]:
    """The Storage Box's type (and its location, when the settings name one) against
    Hetzner's catalogue; nothing when backups don't go to a Storage Box."""
    if settings.backup.target != "storagebox":
        return []
    p: list[str] = []
    sb = settings.backup.storage_box
    bt = answers.storage_box_type
    fix = _box_fix(answers.all_storage_box_types)
    if isinstance(bt, Missing):
        p.append(f"{BOX_KEY}.type: {sb.type!r} is not a Hetzner Storage Box type (the API says: {bt.reason}); {fix}")
    elif bt is not None and bt.deprecated:
        p.append(
            f"{BOX_KEY}.type: {sb.type!r} is deprecated by Hetzner (announced "
            f"{_date(bt.deprecation_announced)}, unavailable after "
            f"{_date(bt.unavailable_after)}); {fix}"
        )
    loc = answers.storage_box_location
    if isinstance(loc, Missing):
        p.append(
            f"{BOX_KEY}.location: {sb.location!r} is not a Hetzner location (the API "
            f"says: {loc.reason}); use one from {LIST_LOCATIONS} that offers Storage "
            "Boxes, e.g. 'fsn1', or leave it out (the servers' location where boxes exist)"
        )
    return p


def needs_all_types(found: list[str]) -> bool:
    """Whether a problem names a server type, so its fix should list the current ones."""
    return any(".serverTypes." in line for line in found)


def needs_all_storage_box_types(found: list[str]) -> bool:
    return any(line.startswith(f"{BOX_KEY}.type:") for line in found)
