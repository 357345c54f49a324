"""Walk deploy.plan(settings) on the lab hosts, exactly as Pulumi's remote commands do,
but over nsenter instead of SSH: each step's bash program goes on stdin to the same
`deploy.RUN_PROGRAM` command line that the Pulumi component runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from mailstack import context, deploy

from . import machines
from .util import log


class StepFailed(RuntimeError):
    pass


def _stream(pipe, prefix: str, sink: list[str]) -> None:
    for line in iter(pipe.readline, ""):
        sink.append(line)
        print(f"  {prefix} {line.rstrip()}", file=sys.stderr, flush=True)


def run_step(ctx: context.Context, step: deploy.Step, timeout: float = 900) -> float:
    program = step.render(ctx).shell(step.name)
    t0 = time.monotonic()
    cmd = [
        "nsenter",
        "-t",
        str(machines.leader(step.host)),
        "-a",
        "env",
        "-i",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root",
        "LANG=C.UTF-8",
        "bash",
        "-c",
        deploy.RUN_PROGRAM,
    ]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ts = [
        threading.Thread(target=_stream, args=(p.stdout, f"{step.name}|", lines), daemon=True),
        threading.Thread(target=_stream, args=(p.stderr, f"{step.name}!", lines), daemon=True),
    ]
    for t in ts:
        t.start()
    p.stdin.write(program)
    p.stdin.close()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise StepFailed(f"step {step.name} on {step.host} timed out after {timeout:.0f}s")
    for t in ts:
        t.join(5)
    dt = time.monotonic() - t0
    if rc != 0:
        raise StepFailed(
            f"step {step.name} on {step.host} failed (exit {rc}) after {dt:.1f}s; last output:\n" + "".join(lines[-15:])
        )
    log(f"step {step.name} on {step.host}: ok in {dt:.1f}s")
    return dt


def run_plan(ctx: context.Context, only: set[str] | None = None) -> dict[str, float]:
    times = {}
    for step in deploy.plan(ctx.settings):
        if only is not None and step.name not in only:
            continue
        times[step.name] = run_step(ctx, step)
    return times
