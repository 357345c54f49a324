"""The config schema has three homes that must agree: the settings model (the truth: types,
defaults, validation), `Pulumi.yaml` (project-level `config:`, which the Pulumi CLI
checks before the program runs) and the README's config table (what people read)."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from mailstack.settings import NAMESPACE, Settings, load_settings, reference
from tests.conftest import stack_config

ROOT = Path(__file__).resolve().parent.parent
# Pulumi can declare only these; anything else (objects, arrays of objects) is untyped.
PULUMI_TYPES = {str: "string", int: "integer", bool: "boolean"}
_ROW = re.compile(r"^\| `(?P<key>[a-z]+:[A-Za-z]+)` \| (?P<default>.*?) \| (?P<meaning>.*) \|$")


def project_config() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]


def readme_rows() -> dict[str, str]:
    """config key -> default cell of the README's table under "Configure a stack"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configure a stack", 1)[1].split("\n## ", 1)[0]
    return {m["key"]: m["default"] for m in map(_ROW.match, section.splitlines()) if m}


def model_keys() -> dict[str, typing.Any]:
    """`mailstack:<key>` -> the model's field."""
    return {f"{NAMESPACE}:{f.alias or name}": f for name, f in Settings.model_fields.items()}


def pulumi_type(annotation) -> dict | None:
    """What Pulumi.yaml must declare for a field of this type (None: no type)."""
    if typing.get_origin(annotation) is typing.Literal:
        return {"type": PULUMI_TYPES[type(typing.get_args(annotation)[0])]}
    if annotation in PULUMI_TYPES:
        return {"type": PULUMI_TYPES[annotation]}
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        inner = pulumi_type(item)
        return {"type": "array", "items": inner} if inner else None
    return None


def test_pulumi_yaml_and_readme_list_exactly_the_models_keys():
    want = set(model_keys())
    assert set(project_config()) == want
    assert {k for k in readme_rows() if k.startswith(f"{NAMESPACE}:")} == want


@pytest.mark.parametrize("key", sorted(model_keys()))
def test_each_key_agrees_in_type_requiredness_and_default(key):
    field = model_keys()[key]
    declared = project_config()[key]
    assert declared.get("description", "").strip(), f"{key}: Pulumi.yaml has no description"
    assert {k: declared[k] for k in ("type", "items") if k in declared} == (pulumi_type(field.annotation) or {})

    cell = readme_rows()[key]
    if field.is_required():
        # Pulumi then refuses a stack without the key, as the model would.
        assert "default" not in declared, f"{key} is required by the model"
        assert re.match(r"\((\w+ )?required", cell), f"README: {key} is required, says {cell!r}"
        return
    assert "default" in declared, f"{key}: without a default Pulumi would demand it in every stack"
    model_default = field.get_default(call_default_factory=True)
    if isinstance(model_default, BaseModel):
        assert declared["default"] == {}, f"{key}: object defaults live in the model only"
        for leaf, value in _leaves(model_default):
            assert f"{leaf}: {_shown(value)}" in cell, f"README default of {key} lacks {leaf}: {_shown(value)}"
    elif isinstance(model_default, tuple):
        assert declared["default"] == [] == list(model_default)
        assert cell == "`[]`"
    else:
        assert declared["default"] == model_default
        assert cell == f"`{model_default}`"


def _leaves(model: BaseModel):
    """(alias, value) for every scalar default inside a model (None and lists skipped)."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value)
        elif value is not None and not isinstance(value, tuple):
            yield field.alias or name, value


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_pulumi_yaml_defaults_change_nothing():
    """What the CLI fills in for a key the stack leaves out must mean the model's default."""
    minimal = {
        k: v
        for k, v in stack_config().items()
        if k
        in {
            f"{NAMESPACE}:domains",
            f"{NAMESPACE}:acme",
            f"{NAMESPACE}:admin",
            # at least one user: the role addresses need a mailbox
            f"{NAMESPACE}:users",
        }
    }
    filled = dict(minimal)
    for key, declared in project_config().items():
        if key not in filled and "default" in declared:
            value = declared["default"]
            filled[key] = value if isinstance(value, str) else json.dumps(value)
    assert load_settings(filled) == load_settings(minimal)


def _models(model: type[BaseModel] = Settings, prefix: str = ""):
    """(key path, field) of every field of the settings model, sections included."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        yield key, field
        for t in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                yield from _models(t, key + ".")


def test_every_settings_field_has_a_description():
    assert [key for key, field in _models() if not (field.description or "").strip()] == []


def test_readme_config_reference_is_the_models():
    """README.md's table of every key is what `make config-reference` writes from the
    model: a field added, removed, or described or defaulted differently shows here."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split(reference.REFERENCE_BEGIN, 1)[1].split(reference.REFERENCE_END, 1)[0]
    assert reference.REFERENCE_BEGIN + block + reference.REFERENCE_END == reference.table(), (
        "README.md's config reference is behind the settings model: run `make config-reference`"
    )
    # Every key of the model has its row (the table is not merely equal to itself).
    keys = {re.sub(r"\[\]", "", k) for k, _, _ in reference.rows()}
    assert keys == {f"{NAMESPACE}:{key}" for key, _ in _models()}
