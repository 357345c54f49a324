"""Lint, format and types, with the settings in pyproject.toml: ruff (pyflakes,
pycodestyle's errors, import order, Python 3.11 syntax; and its formatter) over the
whole repository, mypy over mailstack/ and components/. In the fast suite, so CI runs
them too; `ruff format .` and `ruff check --fix .` repair most findings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "argv",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_clean(argv):
    r = _run(*argv)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
