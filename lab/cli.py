"""python -m lab {up|down|run|check|bench|shell ROLE}: see docs/lab.md."""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str]) -> int:
    if argv and argv[0].startswith("_"):
        return _internal(argv)
    p = argparse.ArgumentParser(prog="python -m lab")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="bring the lab up and leave it running")
    r = sub.add_parser("run", help="up, run the scenarios, print a summary, take it down")
    for x in (u, r):
        x.add_argument("--topology", choices=["ha", "single"], default=None)
    r.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    r.add_argument("--only", nargs="*", help="scenario names to run")
    d = sub.add_parser("deploy", help="run the deploy steps again on the running lab")
    d.add_argument("--from", dest="start", help="first step to run (default: all)")
    c = sub.add_parser("check", help="run the scenarios against the running lab")
    c.add_argument("--only", nargs="*", help="scenario names to run")
    sub.add_parser("down", help="remove everything the lab made")
    b = sub.add_parser(
        "bench",
        help="print figures (full vs bare throughput and latency, mx2's drain, recovery, lab phases) from the lab",
    )
    b.add_argument("--only", nargs="*", help="load, mx2_drain, recovery")
    from mailstack.status import cli as status_cli

    sub.add_parser(
        "status", help="mailstack status against the running lab", parents=[status_cli.parser("status")], add_help=False
    )
    sh = sub.add_parser("shell", help="a root shell on a lab host")
    sh.add_argument("role")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (namespaces, mounts, containers)", file=sys.stderr)
        return 2

    from . import stand

    if a.cmd == "down":
        stand.down()
        return 0
    if a.cmd == "deploy":
        from . import steps

        try:
            times = stand.redeploy(a.start)
        except steps.StepFailed as exc:
            print(f"deploy failed: {exc}", file=sys.stderr)
            return 1
        _print_timings({f"step {k}": v for k, v in times.items()})
        return 0
    if a.cmd == "check":
        from . import scenarios

        results = scenarios.run_all(a.only)
        print(scenarios.table(results))
        return 0 if all(r.ok for r in results) else 1
    if a.cmd == "bench":
        from . import bench

        return bench.main(a.only)
    if a.cmd == "status":
        from . import status

        return status_cli.report(status.environment(), a)
    if a.cmd == "shell":
        from . import machines

        os.execvp("nsenter", ["nsenter", "-t", str(machines.leader(a.role)), "-a", "bash", "-l"])
    if a.cmd == "up":
        try:
            timings = stand.up(a.topology)
        except BaseException as exc:
            print(f"lab up failed: {exc}", file=sys.stderr)
            print("state left for inspection; `make lab-down` removes it", file=sys.stderr)
            return 1
        _print_timings(timings)
        print(stand.access_text())
        return 0

    # run
    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    from . import scenarios

    ok = False
    try:
        try:
            timings = stand.up(a.topology)
        except Exception as exc:
            print(f"\nlab up FAILED: {exc}", file=sys.stderr)
            return 1
        _print_timings(timings)
        results = scenarios.run_all(a.only)
        print(scenarios.table(results))
        ok = all(r.ok for r in results)
    finally:
        if not getattr(a, "keep", False):
            stand.down()
    return 0 if ok else 1


def _print_timings(t: dict[str, float]) -> None:
    print("\nphase                                       seconds")
    for k, v in t.items():
        print(f"  {k:<42} {v:7.1f}")


def _internal(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "_supervise":
        from . import machines

        return machines.supervise(args[0])
    if cmd == "_forward":
        from . import forward

        return forward.main(args)
    raise SystemExit(f"unknown internal command {cmd}")
