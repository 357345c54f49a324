"""The project's floor plan, as docs/conventions.md states it."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import mailstack

ROOT = Path(__file__).resolve().parents[1]


def test_nothing_in_mailstack_imports_pulumi():
    """mailstack/ is pure rendering, reused unchanged by the lab: importing every module
    of it loads no Pulumi SDK (the stack config is read in components/config.py)."""
    programs = {"mailstack.status.collect"}   # run on the hosts as a script, not imported
    names = [m.name for m in pkgutil.walk_packages(mailstack.__path__, "mailstack.")
             if not m.name.endswith("__main__") and m.name not in programs]
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "bad = sorted(m for m in sys.modules if m == 'pulumi' or m.startswith('pulumi'))\n"
            "print(' '.join(bad))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert len(names) > 20
    assert r.stdout.strip() == ""


def test_no_import_statement_in_mailstack_names_pulumi():
    """Also not inside a function, where the import test above can't see it."""
    import ast
    found = []
    for path in sorted((ROOT / "mailstack").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in mods if m.startswith("pulumi")]
    assert found == []
