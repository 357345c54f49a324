"""Asks Hetzner, through the provider's data sources, whether the stack's server types,
location and image exist and fit together (`mailstack.catalogue` decides).

Runs in `pulumi preview` as in `up`, before any resource is declared, so a retired server
type stops the run with a settings-style message instead of failing at create.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

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
            C.Offer(location=_get(o, "name"), available=_get(o, "available", True) is not False,
                    deprecated=bool(_get(o, "is_deprecated")),
                    deprecation_announced=_get(o, "deprecation_announced") or "",
                    unavailable_after=_get(o, "unavailable_after") or "")
            for o in _get(r, "locations") or ()),
    )


def _image(r: Any) -> C.Image:
    return C.Image(name=_get(r, "name"), architecture=_get(r, "architecture"))


def check(settings: Settings, hosts: dict[str, H.Host]) -> C.Location:
    """The stack's location as Hetzner describes it, or SettingsError naming every
    server type, location or image that doesn't fit."""
    hz = settings.hetzner
    names = sorted(set(C.server_types_in_use(settings, hosts).values()))
    types = {n: _ask(lambda n=n: _server_type(hcloud.get_server_type(name=n))) for n in names}
    location = _ask(lambda: hcloud.get_location(name=hz.location))
    if not isinstance(location, C.Missing):
        location = C.Location(name=location.name, network_zone=location.network_zone)
    architectures = sorted({t.architecture for t in types.values() if isinstance(t, C.ServerType)})
    images = {a: _ask(lambda a=a: _image(hcloud.get_image(name=hz.image, with_architecture=a)))
              for a in architectures}
    answers = C.Answers(server_types=types, location=location, images=images)
    found = C.problems(settings, hosts, answers)
    if C.needs_all_types(found):
        every = _ask(lambda: [_server_type(t) for t in hcloud.get_server_types().server_types])
        if not isinstance(every, C.Missing):
            answers = C.Answers(types, location, images, all_types=every)
            found = C.problems(settings, hosts, answers)
    if found:
        raise SettingsError(found)
    assert isinstance(location, C.Location)
    return location
