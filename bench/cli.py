"""``python -m bench``: choose cases and peers, run them, print the table, save the JSON.

Exit code: 0 when every case passes its budget (or has no peer to compare with), 1 when one
fails or errs, 2 for bad options, 130 when interrupted.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from bench import load, peers, report, scenarios
from bench.fixtures import write_fixtures
from bench.nginx import find_nginx
from bench.runner import LOAD_CPU, SERVER_CPU, ScenarioResult, Settings, run_scenario
from bench.servers import raise_nofile

_REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONNECTIONS = 32


def default_xps() -> str:
    """This checkout's .venv/bin/xps-server, else xps-server on PATH."""
    venv = _REPO / ".venv" / "bin" / "xps-server"
    if venv.is_file():
        return str(venv)
    return shutil.which("xps-server") or str(venv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark xps-server side by side with the best peer that does the same job "
            "(nginx, Caddy, HAProxy; one worker each), case by case, against each case's "
            "budget: xps req/s at least a set fraction of the best peer's (see --list)."
        ),
    )
    parser.add_argument(
        "--duration", type=int, default=10, metavar="SECONDS", help="per measurement (default 10)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help=f"concurrent connections for every case but c1000 (default {DEFAULT_CONNECTIONS})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="measure each server N times, taking turns, and keep its median (default 1)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="NAME[,NAME]", help="run these cases (see --list)")
    which.add_argument("--all", action="store_true", help="run every case (the default)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    compared = parser.add_mutually_exclusive_group()
    compared.add_argument(
        "--peers",
        metavar="NAME[,NAME]",
        help=f"compare with these peers only ({', '.join(peers.NAMES)}; default: all installed)",
    )
    compared.add_argument(
        "--no-peers", "--no-nginx", action="store_true", help="measure xps-server only"
    )
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
    width = max(len(s.name) for s in scenarios.SCENARIOS)
    for s in scenarios.SCENARIOS:
        connections = f"{s.connections:,} connections" if s.connections else "--connections"
        print(
            f"{s.name:<{width}}  {s.description}; {connections}; "
            f"xps req/s >= {s.budget:g} x the best of {', '.join(s.peers)}"
        )


def _selected(args: argparse.Namespace) -> list[scenarios.Scenario]:
    if args.only:
        return scenarios.by_name([n.strip() for n in args.only.split(",") if n.strip()])
    return list(scenarios.SCENARIOS)


def _peer_binaries(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[dict[str, str], list[str]]:
    """The peers to compare (name -> binary), and the default ones that are not installed."""
    if args.no_peers:
        return {}, []
    if args.peers is None:
        wanted = list(peers.NAMES)
    else:
        wanted = [n.strip() for n in args.peers.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in peers.NAMES]
        if unknown:
            parser.error(f"unknown peer {', '.join(unknown)} (known: {', '.join(peers.NAMES)})")
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in wanted:
        binary = peers.by_name(name).find()
        if binary is None:
            missing.append(name)
        else:
            found[name] = binary
    if missing and args.peers is not None:
        parser.error(f"not installed: {', '.join(missing)} (apt-get install -y {missing[0]})")
    return found, missing


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
        parser.error(f"unknown case {e.args[0]} (known: {known})")
    if min(args.duration, args.connections, args.rounds) < 1:
        parser.error("--duration, --connections and --rounds must be at least 1")
    if args.pin and (problem := _check_pinning()):
        parser.error(problem)
    compared, missing = _peer_binaries(args, parser)
    versions = {name: peers.by_name(name).version(binary) for name, binary in compared.items()}
    wrk = None if args.loadgen else load.find_wrk()
    nofile = raise_nofile()  # c1000 needs more than the usual 1024, for servers and wrk alike
    load_average = os.getloadavg()
    run_info = {
        "cases": [s.name for s in chosen],
        "duration": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "pin": args.pin,
        "load_tool": wrk or "bench.loadgen",
        "xps": args.xps,
        "peers": {name: {"binary": compared[name], "version": versions[name]} for name in compared},
        "nofile": nofile,
        "load_average_at_start": load_average,
    }
    print(
        f"load: {run_info['load_tool']}, {args.connections} connections (c1000: 1,000), "
        f"{args.duration} s"
        + (f" x {args.rounds} rounds (median)" if args.rounds > 1 else "")
        + f"; xps: {args.xps}; peers: "
        f"{', '.join(versions.values()) or 'none'}" + ("; pinned" if args.pin else ""),
        flush=True,
    )
    print(
        "load average: " + " ".join(f"{n:.2f}" for n in load_average) + f"; {os.cpu_count()} CPUs",
        flush=True,
    )
    if missing:
        print(f"not installed, not compared: {', '.join(missing)}", flush=True)

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
                peers=compared,
                backend_nginx=find_nginx(),
                wrk=wrk,
                connections=args.connections,
                duration=args.duration,
                pin=args.pin,
                nofile=nofile,
                rounds=args.rounds,
            )
            for scenario in chosen:
                results.append(run_scenario(scenario, settings))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: servers stopped, reporting what was measured", file=sys.stderr)

    print()
    print(report.table(results))
    print("load average: " + " ".join(f"{n:.2f}" for n in os.getloadavg()))
    path = report.write_json(results, run_info)
    print(f"\nresults: {path}")
    if interrupted:
        return 130
    return 0 if all(r.verdict in ("PASS", "n/a") for r in results) else 1
