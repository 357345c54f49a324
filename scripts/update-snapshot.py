#!/usr/bin/env python3
"""Rewrite tests/snapshots/<stack>.json from the program run under mocks (`make snapshot`).

Review the diff before committing it: it is the change in the resource graph that a
`pulumi preview` of the same config would show.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pulumi_mocks import SNAPSHOT_DIR, example_config, run_program, snapshot_text  # noqa: E402


def main(stacks: list[str]) -> None:
    SNAPSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for stack in stacks:
        config, secret_keys = example_config(stack)
        path = SNAPSHOT_DIR / f"{stack}.json"
        text = snapshot_text(run_program(config, secret_keys, stack=stack))
        old = path.read_text() if path.exists() else None
        path.write_text(text)
        print(f"{path.relative_to(ROOT)}: {'unchanged' if old == text else 'updated'}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["dev"])
