"""The running program's stack config, read through the SDK's public config functions,
for `mailstack.settings.load_stack` (which stays free of Pulumi)."""

from __future__ import annotations

from typing import Any

from pulumi.runtime import config as rc


def stack_config() -> tuple[dict[str, Any], set[str]]:
    """(every config key of the stack -> its raw value, the keys that are secrets)."""
    # The engine hands the program its whole config (set_all_config); PULUMI_CONFIG is
    # the older way, still honoured by the SDK's get_config.
    keys = set(rc.CONFIG.get()) | set(rc.get_config_env())
    merged = {k: rc.get_config(k) for k in keys}
    secret = {k for k in keys if rc.is_config_secret(k)} | set(rc.get_config_secret_keys_env())
    return merged, secret
