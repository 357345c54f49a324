"""The mail data: users (mailboxes) and aliases."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from .base import _lower, _Model

# RFC 2142: every mail domain must accept mail for these (and Hetzner's abuse desk and
# DNSBL operators write to abuse@).
ROLE_LOCAL_PARTS = ("postmaster", "abuse")


class User(_Model):
    address: str = Field(description="the mailbox's address, in one of `domains`; it is also the login")
    password_hash: str | None = Field(
        default=None,
        description=(
            "a `$6$` (SHA512-CRYPT) or `$2b$` (bcrypt) hash, stored as a secret (`make hash-password`); "
            "unset: the stack generates an initial password (output `initialPasswords`, secret)"
        ),
    )
    quota_mb: int | None = Field(
        default=None,
        ge=0,
        description=(
            "this mailbox's size in MiB (0 = unlimited; more than the mail volume is refused); unset: `quota.defaultMb`"
        ),
    )
    active: bool = Field(
        default=True, description="false: the mailbox keeps its mail but can't log in and receives nothing"
    )

    _norm = field_validator("address", mode="before")(_lower)

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]

    @property
    def local_part(self) -> str:
        return self.address.rsplit("@", 1)[0]


class Alias(_Model):
    address: str = Field(description="the alias, in one of `domains`; not also a user")
    to: tuple[str, ...] = Field(
        description=("where its mail goes: users, other aliases, or addresses outside (a local address must exist)")
    )
    active: bool = Field(default=True, description="false: mail to the alias is refused")

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
