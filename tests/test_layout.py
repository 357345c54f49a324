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
    programs = {"mailstack.status.collect"}  # run on the hosts as a script, not imported
    names = [
        m.name
        for m in pkgutil.walk_packages(mailstack.__path__, "mailstack.")
        if not m.name.endswith("__main__") and m.name not in programs
    ]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'pulumi' or m.startswith('pulumi'))\n"
        "print(' '.join(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert len(names) > 20
    assert r.stdout.strip() == ""


def test_no_import_statement_in_mailstack_names_pulumi():
    """Also not inside a function, where the import test above can't see it."""
    import ast

    found = []
    for path in sorted((ROOT / "mailstack").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in mods if m.startswith("pulumi")]
    assert found == []


def _imports(path: Path, package: str) -> tuple[set[str], list[str]]:
    """The mailstack modules a file imports (anywhere in it), and those imported inside
    a function (where an import hides a cycle)."""
    import ast

    tree = ast.parse(path.read_text())
    parent = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.startswith("mailstack")]
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not base.startswith("mailstack"):
                return []
            # `from . import x` names submodules; `from .x import y` names module x.
            return [f"{base}.{a.name}" if node.module is None else base for a in node.names]
        return []

    found: set[str] = set()
    nested: list[str] = []
    for node in ast.walk(tree):
        names = targets(node)
        found |= set(names)
        n = node
        while names and n in parent:
            n = parent[n]
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested.append(f"{path.relative_to(ROOT)}:{node.lineno} {', '.join(names)}")
                break
    return found, nested


def test_mailstack_has_no_import_cycle_and_no_imports_hidden_in_functions():
    modules = {}
    for path in sorted((ROOT / "mailstack").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else name.rsplit(".", 1)[0]
        modules[name] = (path, package)
    graph, nested = {}, []
    for name, (path, package) in modules.items():
        deps, hidden = _imports(path, package)
        graph[name] = {d for d in deps if d in modules and d != name}
        nested += hidden
    assert nested == []
    # Depth-first search for a cycle among the modules.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(n: str, path: list[str]) -> bool:
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycle.extend(path[path.index(d) :] + [n, d] if d in path else [n, d])
                return True
            if d not in state and visit(d, path + [n]):
                return True
        state[n] = 2
        return False

    for n in sorted(graph):
        if n not in state and visit(n, []):
            break
    assert cycle == []


MAX_LINES = 400


def test_modules_in_mailstack_and_lab_stay_small():
    """One concern per module: past MAX_LINES, a module is split (make a new module
    rather than growing one; docs/conventions.md)."""
    big = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for d in ("mailstack", "lab")
        for p in sorted((ROOT / d).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert big == []
