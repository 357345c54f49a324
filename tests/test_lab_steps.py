"""The lab's deploy-step runner (lab/steps.py run_plan) walks deploy.plan as Pulumi walks
the resource graph: a step starts only after every step it depends on has ended, steps
that don't depend on each other run at the same time, and after a failure no new step
starts. run_step is replaced by a recorder here: what is under test is the order."""

from __future__ import annotations

import threading
import time

import pytest

from lab import steps
from mailstack import deploy


def _record(monkeypatch, fail: str | None = None) -> dict[str, tuple[float, float]]:
    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()

    def fake(ctx, step, timeout=900):
        t0 = time.monotonic()
        time.sleep(0.05)
        if step.name == fail:
            raise steps.StepFailed(f"step {step.name} failed")
        with lock:
            spans[step.name] = (t0, time.monotonic())
        return 0.05

    monkeypatch.setattr(steps, "run_step", fake)
    return spans


def test_each_step_starts_after_its_dependencies_and_the_rest_run_at_once(monkeypatch, ctx):
    spans = _record(monkeypatch)
    ended: dict[str, float] = {}
    times = steps.run_plan(ctx, finished=ended)
    plan = deploy.plan(ctx.settings)
    assert set(times) == set(spans) == set(ended) == {s.name for s in plan}
    for s in plan:
        for d in s.depends_on:
            assert spans[d][1] <= spans[s.name][0], f"{s.name} started before {d} ended"
    # The three hosts' cloud-init waits depend on nothing: they overlap.
    waits = [spans[f"wait-{r}"] for r in ("mx1", "imap", "mx2")]
    assert max(a for a, _ in waits) < min(b for _, b in waits)


def test_only_counts_the_steps_left_out_as_done(monkeypatch, ctx):
    spans = _record(monkeypatch)
    steps.run_plan(ctx, only={"services-imap", "certificates-imap"})
    assert set(spans) == {"services-imap", "certificates-imap"}
    assert spans["services-imap"][1] <= spans["certificates-imap"][0]


def test_after_a_failure_no_new_step_starts(monkeypatch, ctx):
    spans = _record(monkeypatch, fail="postgres-primary")
    with pytest.raises(steps.StepFailed, match="postgres-primary"):
        steps.run_plan(ctx)
    after = {s.name for s in deploy.plan(ctx.settings) if "postgres-primary" in s.depends_on}
    assert after and not after & set(spans)
