"""Asks Hetzner, through the provider's data sources, whether the stack's server types,
location and image exist and fit together (`mailstack.catalogue` decides).

Runs in `pulumi preview` as in `up`, before any resource is declared, so a retired server
type stops the run with a settings-style message instead of failing at create.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import pulumi_hcloud as hcloud

from mailstack import catalogue as C
from mailstack import hosts as H
from mailstack.settings import Settings, SettingsError

T = TypeVar("T")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    # Invoke results are typed objects; their nested entries may arrive as plain dicts.
    if isinstance(obj, dict):
        camel = name.split("_")[0] + "".join(w.title() for w in name.split("_")[1:])
        return obj.get(name, obj.get(camel, default))
    return getattr(obj, name, default)


def _ask(lookup: Callable[[], T]) -> T | C.Missing:
    try:
        return lookup()
    except Exception as exc:  # the provider's answer for an unknown name, or no access
        return C.Missing(str(exc).strip() or type(exc).__name__)


def _server_type(r: Any) -> C.ServerType:
    return C.ServerType(
        name=_get(r, "name"),
        architecture=_get(r, "architecture") or "x86",
        cores=int(_get(r, "cores") or 0),
        memory_gb=float(_get(r, "memory") or 0),
        # Only the per-location deprecation: the type-wide fields are being phased out.
        offers=tuple(
            C.Offer(
                location=_get(o, "name"),
                available=_get(o, "available", True) is not False,
                deprecated=bool(_get(o, "is_deprecated")),
                deprecation_announced=_get(o, "deprecation_announced") or "",
                unavailable_after=_get(o, "unavailable_after") or "",
            )
            for o in _get(r, "locations") or ()
        ),
    )


def _image(r: Any) -> C.Image:
    return C.Image(name=_get(r, "name"), architecture=_get(r, "architecture"))


def _box_type(r: Any) -> C.StorageBoxType:
    return C.StorageBoxType(
        name=_get(r, "name"),
        deprecated=bool(_get(r, "is_deprecated")),
        deprecation_announced=_get(r, "deprecation_announced") or "",
        unavailable_after=_get(r, "unavailable_after") or "",
    )


def _location(r: Any) -> C.Location:
    return C.Location(name=_get(r, "name"), network_zone=_get(r, "network_zone"))


def check(settings: Settings, hosts: dict[str, H.Host]) -> C.Location:
    """The stack's location as Hetzner describes it, or SettingsError naming every
    server type, location or image that doesn't fit."""
    hz = settings.hetzner
    names = sorted(set(C.server_types_in_use(settings, hosts).values()))
    types = {n: _ask(lambda n=n: _server_type(hcloud.get_server_type(name=n))) for n in names}
    location = _ask(lambda: _location(hcloud.get_location(name=hz.location)))
    architectures = sorted({t.architecture for t in types.values() if isinstance(t, C.ServerType)})
    images = {a: _ask(lambda a=a: _image(hcloud.get_image(name=hz.image, with_architecture=a))) for a in architectures}
    box_type = box_location = None
    if settings.backup.target == "storagebox":
        sb = settings.backup.storage_box
        box_type = _ask(lambda: _box_type(hcloud.get_storage_box_type(name=sb.type)))
        if sb.location:
            box_location = _ask(lambda: _location(hcloud.get_location(name=sb.location)))
    answers = C.Answers(
        server_types=types,
        location=location,
        images=images,
        storage_box_type=box_type,
        storage_box_location=box_location,
    )
    found = C.problems(settings, hosts, answers)
    # Only a refused type is worth the full lists, for the fix; then judge again with them.
    fuller = answers
    if C.needs_all_types(found):
        every = _ask(lambda: [_server_type(t) for t in hcloud.get_server_types().server_types])
        if not isinstance(every, C.Missing):
            fuller = dataclasses.replace(fuller, all_types=every)
    if C.needs_all_storage_box_types(found):
        boxes = _ask(lambda: [_box_type(t) for t in hcloud.get_storage_box_types().storage_box_types])
        if not isinstance(boxes, C.Missing):
            fuller = dataclasses.replace(fuller, all_storage_box_types=boxes)
    if fuller is not answers:
        found = C.problems(settings, hosts, fuller)
    if found:
        raise SettingsError(found)
    assert isinstance(location, C.Location)
    return location
