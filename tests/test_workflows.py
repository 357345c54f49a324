"""The GitHub workflows: actionlint-clean, actions pinned by commit SHA, and `pulumi up` only
for the stacks config/deploy.yaml lists (never the example), on the runner that can SSH."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import stacks  # noqa: E402  (scripts/stacks.py)

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PREVIEW = ROOT / ".github" / "workflows" / "preview.yml"
_USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<comment>.*)$")


def actionlint() -> str:
    # Installed into the venv from PyPI (requirements.txt).
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert found, "actionlint is not installed in the venv; run `make setup`"
    return found


def test_workflows_pass_actionlint():
    result = subprocess.run(
        [actionlint(), "-no-color", "-config-file", str(ROOT / ".github" / "actionlint.yaml"), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    # The check above can fail: an unknown runner label and a bad expression are reported.
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: [self-hosted, nobody-has-this]\n"
        "    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    result = subprocess.run([actionlint(), "-no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "nobody-has-this" in result.stdout and "nope" in result.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_sha(path):
    uses = [m for m in map(_USES.match, path.read_text().splitlines()) if m]
    assert uses
    for m in uses:
        action, _, ref = m["ref"].partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{path.name}: {m['ref']} is not pinned by commit SHA"
        assert re.search(r"#\s*v\d", m["comment"]), f"{path.name}: name the tag of {action}@{ref} in a comment"


def _jobs() -> dict:
    return yaml.safe_load(PREVIEW.read_text())["jobs"]


def _pulumi_steps(job: dict) -> list[dict]:
    return [s for s in job.get("steps", []) if s.get("uses", "").startswith("pulumi/actions@")]


def test_up_runs_only_for_the_deploy_list_on_main_on_the_deploy_runner():
    jobs = _jobs()
    up_jobs = {name: job for name, job in jobs.items() if any(s["with"]["command"] == "up" for s in _pulumi_steps(job))}
    assert list(up_jobs) == ["up"]
    up = up_jobs["up"]
    assert up["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.deploy) }}"
    assert "github.event_name == 'push'" in up["if"] and "refs/heads/main" in up["if"]
    assert "self-hosted" in up["runs-on"] and "mailstack-deploy" in up["runs-on"]
    assert up["concurrency"]["cancel-in-progress"] is False
    # Previews: every stack, on pull requests only, never `up`.
    preview = jobs["preview"]
    assert preview["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.preview) }}"
    assert [s["with"]["command"] for s in _pulumi_steps(preview)] == ["preview"]
    assert preview["if"] == "github.event_name == 'pull_request'"
    assert jobs["stacks"]["outputs"]["deploy"] == "${{ steps.list.outputs.deploy }}"


def test_repository_previews_every_stack_and_deploys_none_of_the_examples(capsys):
    assert stacks.main() == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out["preview"] == '["dev"]'
    deploy = yaml.safe_load(out["deploy"])
    assert "dev" not in deploy


def _config_dir(tmp_path: Path, deploy_text: str, stack_names=("dev", "prod")) -> Path:
    for name in stack_names:
        (tmp_path / f"Pulumi.{name}.yaml").write_text("config: {}\n")
    (tmp_path / "deploy.yaml").write_text(deploy_text)
    return tmp_path


@pytest.mark.parametrize(
    "deploy_text, expected",
    [
        ("deploy: [prod]\n", ["prod"]),
        ("deploy: []\n", []),
    ],
)
def test_listed_stacks_are_deployed(tmp_path, deploy_text, expected):
    assert stacks.deploy_list(_config_dir(tmp_path, deploy_text)) == (expected, [])


@pytest.mark.parametrize(
    "deploy_text, fragment",
    [
        ("deploy: [prod, dev]\n", "deploy[1]: 'dev' is the example stack"),
        ("deploy: [staging]\n", "deploy[0]: 'staging' has no config/Pulumi.staging.yaml"),
        ("deploy: [prod, prod]\n", "deploy[1]: 'prod' is listed twice"),
        ("deploy: prod\n", "needs a `deploy:` list"),
    ],
)
def test_a_bad_deploy_list_stops_the_workflow(tmp_path, deploy_text, fragment, capsys):
    config_dir = _config_dir(tmp_path, deploy_text)
    assert stacks.main(config_dir) == 1
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.out == ""  # nothing for $GITHUB_OUTPUT
