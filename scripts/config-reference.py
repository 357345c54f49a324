#!/usr/bin/env python3
"""Rewrite README.md's config reference (every key, its default and its description)
from the settings model: run after adding or changing a settings field
(`make config-reference`). tests/test_schema.py fails while the README is behind."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailstack.settings.reference import rewrite  # noqa: E402

readme = ROOT / "README.md"
text = readme.read_text()
new = rewrite(text)
if new != text:
    readme.write_text(new)
    print("README.md: config reference rewritten")
else:
    print("README.md: config reference already current")
