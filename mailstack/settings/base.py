"""What every settings module shares: the config namespace, the error type, the frozen
camelCase model base and the name patterns."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

NAMESPACE = "mailstack"

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}$)({_LABEL}\.)+[a-z]{{2,63}}$")
_HOSTLABEL_RE = re.compile(rf"^{_LABEL}$")
_LOCALPART_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_SHA512_CRYPT_RE = re.compile(r"^\$6\$(rounds=\d{4,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$")
_BCRYPT_RE = re.compile(r"^\$2[aby]\$\d{2}\$[./0-9A-Za-z]{53}$")
# sshd on Debian 12 (OpenSSH 9.2) no longer accepts DSA; RSA below 2048 bits is too weak.
MIN_RSA_BITS = 2048
HASH_FIX = (
    "run `make hash-password`, then store the printed hash with `pulumi config set --secret --path '{key}' '<hash>'`"
)


class SettingsError(ValueError):
    """Stack config is invalid. `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack config:\n" + "\n".join(f"  - {p}" for p in problems))


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
    )


def _lower(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


def _fmt(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
