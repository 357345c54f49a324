"""Walk deploy.plan(settings) on the lab hosts, exactly as Pulumi's remote commands do,
but over nsenter instead of SSH: each step's bash program goes on stdin to the same
`deploy.RUN_PROGRAM` command line that the Pulumi component runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

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


def run_plan(
    ctx: context.Context, only: set[str] | None = None, finished: dict[str, float] | None = None
) -> dict[str, float]:
    """Each step as soon as the steps it depends on are done, several at once, the way
    Pulumi walks the resource graph; a dependency left out by `only` counts as done.
    After a failure no new step starts; the running ones end, then the failure is raised.
    Returns each step's duration; `finished` gets its end (time.monotonic())."""
    pending = [s for s in deploy.plan(ctx.settings) if only is None or s.name in only]
    chosen = {s.name for s in pending}
    done: set[str] = set()
    times: dict[str, float] = {}
    running: dict[Future, deploy.Step] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(pending))) as pool:
        while pending or running:
            for step in [s for s in pending if all(d in done or d not in chosen for d in s.depends_on)]:
                pending.remove(step)
                running[pool.submit(run_step, ctx, step)] = step
            if not running:
                raise StepFailed(f"no step can start: {[s.name for s in pending]} wait for each other")
            ended, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in ended:
                step = running.pop(f)
                times[step.name] = f.result()
                done.add(step.name)
                if finished is not None:
                    finished[step.name] = time.monotonic()
    return times
