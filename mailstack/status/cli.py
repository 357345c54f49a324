"""Command-line front end shared by `python -m mailstack.status` and `python -m lab status`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import engine, model
from .expect import Environment


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="check a deployed mailstack: exit 0 all ok, 1 any error, 2 warnings only"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--problems", action="store_true", help="print only warn and error lines")
    p.add_argument(
        "--changes",
        metavar="STATE_FILE",
        help="print only what changed since the run saved in STATE_FILE, then save "
        "this run there (for a daily job that mails the postmaster)",
    )
    return p


def report(env: Environment, args: argparse.Namespace) -> int:
    checks = engine.run(env)
    if args.changes:
        state = Path(args.changes)
        previous = model.from_json(state.read_text()) if state.exists() else None
        lines = model.changes(previous, checks)
        if lines:
            print("\n".join(lines))
        state.write_text(model.to_json(checks))
    elif args.json:
        print(model.to_json(checks))
    else:
        shown = [c for c in checks if c.status != model.OK] if args.problems else checks
        print(model.text(shown) if shown else "all checks ok")
    return model.exit_code(checks)


def fail(msg: str) -> int:
    print(f"mailstack status: {msg}", file=sys.stderr)
    return 1
