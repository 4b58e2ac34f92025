"""``python -m bench``: choose scenarios and tools, run them, print the table, save the JSON.

Exit code: 0 when every scenario passes (or has no nginx to compare with), 1 when one fails
or errs, 2 for bad options, 130 when interrupted.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from bench import load, nginx, report, scenarios
from bench.fixtures import write_fixtures
from bench.runner import LOAD_CPU, SERVER_CPU, ScenarioResult, Settings, run_scenario

_REPO = Path(__file__).resolve().parent.parent


def default_xps() -> str:
    """This checkout's .venv/bin/xps-server, else xps-server on PATH."""
    venv = _REPO / ".venv" / "bin" / "xps-server"
    if venv.is_file():
        return str(venv)
    return shutil.which("xps-server") or str(venv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark xps-server side by side with nginx against the SPEC §6 budgets.",
    )
    parser.add_argument(
        "--duration", type=int, default=10, metavar="SECONDS", help="per measurement (default 10)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=50,
        metavar="N",
        help="concurrent connections (default 50)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="NAME[,NAME]", help="run these scenarios (see --list)")
    which.add_argument(
        "--all", action="store_true", help="run every scenario, also those needing features"
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--no-nginx", action="store_true", help="measure xps-server only")
    parser.add_argument(
        "--xps",
        default=default_xps(),
        metavar="PATH",
        help="the xps-server to run (default: .venv/bin/xps-server, else xps-server on PATH)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help=f"taskset: servers on core {SERVER_CPU}, load (and proxy backend) on core {LOAD_CPU}",
    )
    parser.add_argument(
        "--loadgen", action="store_true", help="use the Python load client even if wrk exists"
    )
    return parser


def _list() -> None:
    for s in scenarios.SCENARIOS:
        needs = f"  [needs: {', '.join(s.requires)}]" if s.requires else ""
        budget = f"xps >= {s.budget:g} x nginx {s.metric.value}"
        print(f"{s.name:<10}  {s.description}; {budget}{needs}")


def _selected(args: argparse.Namespace) -> list[scenarios.Scenario]:
    if args.all:
        return list(scenarios.SCENARIOS)
    if args.only:
        return scenarios.by_name([n.strip() for n in args.only.split(",") if n.strip()])
    return list(scenarios.DEFAULT)


def _check_pinning() -> str | None:
    if shutil.which("taskset") is None:
        return "--pin needs taskset (util-linux)"
    cores = os.sched_getaffinity(0)
    if not {SERVER_CPU, LOAD_CPU} <= cores:
        return f"--pin needs cores {SERVER_CPU} and {LOAD_CPU}; this process may use {cores}"
    return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        _list()
        return 0
    try:
        chosen = _selected(args)
    except KeyError as e:
        known = ", ".join(s.name for s in scenarios.SCENARIOS)
        parser.error(f"unknown scenario {e.args[0]} (known: {known})")
    if args.duration < 1 or args.connections < 1:
        parser.error("--duration and --connections must be at least 1")
    if args.pin and (problem := _check_pinning()):
        parser.error(problem)
    nginx_bin = nginx.find_nginx()
    wrk = None if args.loadgen else load.find_wrk()
    compare = nginx_bin is not None and not args.no_nginx
    run_info = {
        "scenarios": [s.name for s in chosen],
        "duration": args.duration,
        "connections": args.connections,
        "pin": args.pin,
        "load_tool": wrk or "bench.loadgen",
        "xps": args.xps,
        "nginx": nginx_bin if compare else None,
        "nginx_version": nginx.version(nginx_bin) if compare and nginx_bin else None,
    }
    print(
        f"load: {run_info['load_tool']}, {args.connections} connections, {args.duration} s; "
        f"xps: {args.xps}; nginx: {run_info['nginx_version'] or 'not compared'}"
        + ("; pinned" if args.pin else ""),
        flush=True,
    )
    if not compare and not args.no_nginx:
        print("nginx not found (PATH, /usr/sbin/nginx): measuring xps-server only", flush=True)

    signal.signal(signal.SIGTERM, _interrupt)
    results: list[ScenarioResult] = []
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="xps-bench-") as tmp:
            workdir = Path(tmp)
            docroot = workdir / "www"
            docroot.mkdir()
            write_fixtures(docroot)
            settings = Settings(
                workdir=workdir,
                docroot=docroot,
                xps=args.xps,
                nginx=nginx_bin,
                compare_nginx=compare,
                wrk=wrk,
                connections=args.connections,
                duration=args.duration,
                pin=args.pin,
            )
            for scenario in chosen:
                results.append(run_scenario(scenario, settings))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: servers stopped, reporting what was measured", file=sys.stderr)

    print()
    print(report.table(results))
    path = report.write_json(results, run_info)
    print(f"\nresults: {path}")
    if interrupted:
        return 130
    return 0 if all(r.verdict in ("PASS", "n/a") for r in results) else 1
