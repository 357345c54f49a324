"""The mail data: users (mailboxes) and aliases."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from .base import _lower, _Model

# RFC 2142: every mail domain must accept mail for these (and Hetzner's abuse desk and
# DNSBL operators write to abuse@).
ROLE_LOCAL_PARTS = ("postmaster", "abuse")


class User(_Model):
    address: str
    # None means: the stack generates an initial password (a secret stack output).
    password_hash: str | None = None
    # None: quota.defaultMb. 0: unlimited.
    quota_mb: int | None = Field(default=None, ge=0)
    active: bool = True

    _norm = field_validator("address", mode="before")(_lower)

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]

    @property
    def local_part(self) -> str:
        return self.address.rsplit("@", 1)[0]


class Alias(_Model):
    address: str
    to: tuple[str, ...]
    active: bool = True

    _norm = field_validator("address", mode="before")(_lower)

    @field_validator("to", mode="before")
    @classmethod
    def _to_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            return [_lower(x) for x in v]
        return v

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]
