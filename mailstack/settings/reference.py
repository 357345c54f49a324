"""The config reference: one row per key of the settings model (its default and its
description), as the markdown table README.md carries between REFERENCE_BEGIN and
REFERENCE_END (`make config-reference` writes it; tests/test_schema.py checks it)."""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .base import NAMESPACE
from .model import Settings

REFERENCE_BEGIN = "<!-- config reference: generated from the settings model by `make config-reference` -->"
REFERENCE_END = "<!-- end of the config reference -->"


def _model_of(annotation: typing.Any) -> type[BaseModel] | None:
    """The model a field holds, directly or as the items of a tuple."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _shown(value: typing.Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    if value == "":
        return "(empty)"
    if isinstance(value, BaseModel):
        return "(below)"
    return f"`{_shown(value)}`"


def rows(model: type[BaseModel] = Settings, prefix: str = f"{NAMESPACE}:") -> list[tuple[str, str, str]]:
    """(key, default, description) of every field, a section's own row before its keys."""
    out = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        inner = _model_of(field.annotation)
        is_list = inner is not None and typing.get_origin(field.annotation) is tuple
        out.append((key, _default(field), field.description or ""))
        if inner is not None:
            out += rows(inner, key + ("[]." if is_list else "."))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    lines = [REFERENCE_BEGIN, "", "| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | {default} | {_cell(text)} |" for key, default, text in rows()]
    return "\n".join([*lines, "", REFERENCE_END])


def rewrite(readme: str) -> str:
    """readme with the table between the markers replaced by the current one."""
    head, sep, rest = readme.partition(REFERENCE_BEGIN)
    _, sep2, tail = rest.partition(REFERENCE_END)
    if not (sep and sep2):
        raise ValueError(f"README.md has no {REFERENCE_BEGIN!r} ... {REFERENCE_END!r} block")
    return head + table() + tail
