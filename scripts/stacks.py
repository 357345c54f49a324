#!/usr/bin/env python3
"""Which stacks CI previews and which it deploys, as GitHub step outputs (`key=json`).

Previewed: every config/Pulumi.<stack>.yaml. Deployed: only the stacks listed under
`deploy:` in config/deploy.yaml, each with a stack file, and never an example stack.
A bad list stops the workflow with one line per problem naming the entry and the fix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Example stacks (example.org): previewed to prove they work, never deployed.
EXAMPLES = frozenset({"dev"})


def stacks(config_dir: Path) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in config_dir.glob("Pulumi.*.yaml"))


def deploy_list(config_dir: Path) -> tuple[list[str], list[str]]:
    """(stacks to deploy, problems)."""
    path = config_dir / "deploy.yaml"
    where = f"{path.relative_to(config_dir.parent)}"
    raw = yaml.safe_load(path.read_text()) if path.exists() else None
    entries = (raw or {}).get("deploy") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        return [], [f"{where}: needs a `deploy:` list (empty: deploy nothing), e.g. `deploy: [prod]`"]
    known, problems, chosen = set(stacks(config_dir)), [], []
    for i, name in enumerate(entries):
        key = f"{where}: deploy[{i}]"
        if not isinstance(name, str) or not name:
            problems.append(f"{key}: {name!r} is not a stack name; use e.g. 'prod'")
        elif name in EXAMPLES:
            problems.append(
                f"{key}: {name!r} is the example stack (example.org) and is never deployed; "
                "copy config/Pulumi.dev.yaml to config/Pulumi.<yours>.yaml and list that"
            )
        elif name not in known:
            problems.append(f"{key}: {name!r} has no config/Pulumi.{name}.yaml; add the stack file or fix the name")
        elif name in chosen:
            problems.append(f"{key}: {name!r} is listed twice; remove one")
        else:
            chosen.append(name)
    return chosen, problems


def main(config_dir: Path = ROOT / "config") -> int:
    deploy, problems = deploy_list(config_dir)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"preview={json.dumps(stacks(config_dir))}")
    print(f"deploy={json.dumps(deploy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "config"))
