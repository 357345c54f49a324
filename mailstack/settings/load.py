"""Loading: stack config (as Pulumi passes it) to `Settings`, every problem of one run
reported together, each naming the key, the value and the fix."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from .base import NAMESPACE, SettingsError, _fmt
from .checks import check
from .model import Settings

_KEYS = {name: field.alias or name for name, field in Settings.model_fields.items()}


def _config_key(loc: tuple[Any, ...]) -> str:
    key = f"{NAMESPACE}:"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += ("" if i == 0 else ".") + str(part)
    return key


def _raw_config(config: Mapping[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, value in config.items():
        ns, _, name = key.partition(":")
        if ns != NAMESPACE:
            continue
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
                if isinstance(parsed, (dict, list, bool, int)) and not isinstance(value, bool):
                    value = parsed
            except ValueError:
                pass
        raw[name] = value
    return raw


def load_settings(config: Mapping[str, Any], secret_keys: Iterable[str] = ()) -> Settings:
    """Parse `mailstack:*` stack config (values as Pulumi passes them: strings, JSON for
    objects) into Settings, or raise SettingsError listing every problem."""
    secret_keys = set(secret_keys)
    raw = _raw_config(config)
    unknown = sorted(set(raw) - set(_KEYS.values()))
    problems = [f"{NAMESPACE}:{k}: unknown key; valid keys are {', '.join(sorted(_KEYS.values()))}" for k in unknown]
    for k in unknown:
        raw.pop(k)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            key = _config_key(err["loc"])
            if err["type"] == "missing":
                problems.append(f"{key}: is required but not set; set it in config/Pulumi.<stack>.yaml")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key (value {_fmt(err['input'])}); remove it or fix its spelling")
            else:
                problems.append(f"{key}: {_fmt(err['input'])} is invalid: {err['msg']}")
        raise SettingsError(problems) from None
    problems += check(settings, secret_keys)
    if problems:
        raise SettingsError(problems)
    return settings


def load_stack(config: Mapping[str, Any], secret_keys: Iterable[str], environ: Mapping[str, str]) -> Settings:
    """What the Pulumi program runs: load_settings plus the provider's own secret, so a
    missing or clear-text Hetzner token is reported with everything else, before any
    resource exists."""
    secret_keys = set(secret_keys)
    problems = provider_problems(config, secret_keys, environ)
    try:
        settings = load_settings(config, secret_keys)
    except SettingsError as exc:
        raise SettingsError(exc.problems + problems) from None
    if problems:
        raise SettingsError(problems)
    return with_clock(settings, datetime.datetime.now(datetime.UTC))


def with_clock(settings: Settings, now: datetime.datetime) -> Settings:
    """The DKIM schedule's clock, read once per run so every renderer agrees on the
    phase (a `dkim.now` in the config wins)."""
    if settings.dkim.now is not None or not settings.dkim.rotation_days:
        return settings
    return settings.model_copy(update={"dkim": settings.dkim.model_copy(update={"now": now})})


def provider_problems(config: Mapping[str, Any], secret_keys: set[str], environ: Mapping[str, str]) -> list[str]:
    token = config.get("hcloud:token")
    if token is None and not environ.get("HCLOUD_TOKEN"):
        return [
            "hcloud:token: is not set; create an API token (read/write) in the Hetzner "
            "Cloud console and run `pulumi config set --secret hcloud:token <token>` "
            "(or export HCLOUD_TOKEN)"
        ]
    if token is not None and "hcloud:token" not in secret_keys:
        return [
            "hcloud:token: is stored in clear text in the stack file; remove it and run "
            "`pulumi config set --secret hcloud:token <token>`"
        ]
    if token is not None and not re.fullmatch(r"[A-Za-z0-9]{64}", str(token)):
        return [
            "hcloud:token: <hidden> is not a Hetzner Cloud API token (64 letters and "
            "digits); copy it again from the Hetzner Cloud console"
        ]
    return []
