"""``python -m bench.accounting``: what top talkers and latency histograms cost small files.

Serves the 1 KiB file of the standard fixtures with the operator's traffic accounting on (the
defaults: ``top_clients`` 1000, ``histograms`` true) and off (``top_clients`` 0, ``histograms``
false), alternating the two for ``--rounds`` rounds of wrk (``-c50``, ``--duration`` seconds)
in one run, so both meet the same machine. Each measurement reports requests/s and the
server's CPU time per request (utime + stime from /proc over the wrk run), which moves less
with what else the machine does. The figures are the medians over the rounds; the budget is
"on" costing at most 3 % of "off" (``--budget``). Exit code 0 within it, 1 past it.

On a shared machine those figures move by more than the budget. ``--instructions`` measures
what does not move: the server runs under ``valgrind --tool=callgrind`` (Debian's valgrind),
one keep-alive connection makes ``--requests`` requests one after the other (so every run
does the same work: one loop turn per request; several clients would batch differently from
run to run), and the instructions per request are the difference between that run and one of
a tenth as many, divided by the requests between them (``PYTHONHASHSEED=0`` for the same dict
layout every time).

``--xps CMD`` runs another build (``--xps "python -m xps_server.cli"`` with ``PYTHONPATH``
naming a checkout); ``--pin`` puts the server on core 0 and wrk on core 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import default_xps
from bench.fixtures import write_fixtures
from bench.load import LoadSpec, find_wrk, run_load
from bench.servers import Server, free_port

MODES = {
    "on": {"top_clients": 1000, "histograms": True},
    "off": {"top_clients": 0, "histograms": False},
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(argv: list[str], config: Path, root: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    data = json.loads(config.read_text())
    data["servers"][0]["listeners"][0]["port"] = port
    config.write_text(json.dumps(data))
    server_cpu = 0 if args.pin else None
    with Server("xps", [*argv, str(config)], port, root / "xps.log", server_cpu) as server:
        spec = LoadSpec(
            port, "/1k.txt", (), args.connections, args.duration, 1 if args.pin else None
        )
        run_load(LoadSpec(port, "/1k.txt", (), args.connections, 1, spec.cpu), args.wrk)  # warm
        before = _cpu_seconds(server.pid)
        result = run_load(spec, args.wrk)
        cpu = _cpu_seconds(server.pid) - before
    return {
        "rps": result.requests_per_sec,
        "cpu_us_per_request": cpu * 1e6 / max(1, result.requests),
        "errors": result.errors(),
    }


REQUEST = b"GET /1k.txt HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def _sequential(port: int, requests: int) -> None:
    """One keep-alive client: a request, its whole answer, the next request."""
    deadline = time.monotonic() + 120  # valgrind starts slowly
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    data = b""
    with sock:
        for _ in range(requests):
            sock.sendall(REQUEST)
            while True:
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    length = int(re.search(rb"Content-Length: (\d+)", data[:end])[1])
                    if len(data) >= end + 4 + length:
                        data = data[end + 4 + length :]
                        break
                data += sock.recv(65536)


def _instructions(argv: list[str], config: Path, root: Path, requests: int) -> int:
    """Instructions the server executes for `requests` sequential requests, start and stop
    included."""
    port = free_port()
    data = json.loads(config.read_text())
    data["servers"][0]["listeners"][0]["port"] = port
    config.write_text(json.dumps(data))
    out = root / "callgrind.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",  # through `env VAR=... python`, say
        f"--callgrind-out-file={out}",
        *argv,
        str(config),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with (root / "valgrind.log").open("w+") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        try:
            _sequential(port, requests)
        finally:
            proc.terminate()
            proc.wait(60)
        log.seek(0)
        counts = re.findall(r"Collected : (\d+)", log.read())
    if not counts:
        raise SystemExit("valgrind reported no instruction count (is valgrind installed?)")
    return int(counts[-1])  # the server's: the last process valgrind followed


def instruction_costs(
    command: list[str],
    configs: dict[str, Path],
    args: argparse.Namespace,
    root: Path,
    compared: tuple[str, str, str],
) -> int:
    """Instructions per request of each mode under callgrind, and the cost of the mode
    `compared` names against its base: `compared` is (base mode, mode, what it is the cost
    of). Exit code 0 within the budget, 1 past it."""
    base, measured, what = compared
    width = max(map(len, configs))
    per_request = {}
    for mode, config in configs.items():
        few = _instructions(command, config, root, args.requests // 10)
        many = _instructions(command, config, root, args.requests)
        per_request[mode] = (many - few) / (args.requests - args.requests // 10)
        print(f"{mode:>{width}}: {per_request[mode]:,.0f} instructions per request", flush=True)
    cost = per_request[measured] / per_request[base] - 1
    print(f"cost of {what}: {cost:+.2%} instructions per request (budget {args.budget:.0%})")
    return 0 if cost <= args.budget else 1


def bench_parser(prog: str, description: str | None, budget: float) -> argparse.ArgumentParser:
    """The options of a benchmark that compares modes of one server over rounds of wrk."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--xps", default=default_xps(), help="the xps-server command")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, metavar="SECONDS")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--budget",
        type=float,
        default=budget,
        help=f"allowed cost ({budget}: {budget * 100:.0f} %%)",
    )
    parser.add_argument("--pin", action="store_true")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind instead"
    )
    parser.add_argument("--requests", type=int, default=2000, help="of an --instructions run")
    return parser


def medians(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per mode, the median requests/s and CPU time per request over its rounds; printed
    after a blank line."""
    median = {
        mode: {
            key: statistics.median(run[key] for run in rows)
            for key in ("rps", "cpu_us_per_request")
        }
        for mode, rows in runs.items()
    }
    width = max(map(len, median))
    print()
    for mode, figures in median.items():
        print(
            f"{mode:>{width}}: median {figures['rps']:,.0f} req/s, "
            f"{figures['cpu_us_per_request']:.2f} us CPU/request"
        )
    return median


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.accounting", __doc__, 0.03)
    args = parser.parse_args(argv)
    args.wrk = find_wrk()
    command = shlex.split(args.xps)
    with tempfile.TemporaryDirectory(prefix="xps-accounting-") as tmp:
        root = Path(tmp)
        docroot = root / "www"
        docroot.mkdir()
        write_fixtures(docroot)
        configs = {}
        for mode, keys in MODES.items():
            configs[mode] = root / f"{mode}.json"
            route = {"req_path": "/", "type": "file_serve", "dir_path": str(docroot)}
            listener = {"host": "127.0.0.1", "port": 0}
            data = {**keys, "servers": [{"listeners": [listener], "routes": [route]}]}
            configs[mode].write_text(json.dumps(data))
        if args.instructions:
            return instruction_costs(command, configs, args, root, ("off", "on", "accounting"))
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds):
            for mode in MODES if round_ % 2 == 0 else reversed(MODES):
                run = _measure(command, configs[mode], root, args)
                runs[mode].append(run)
                print(
                    f"round {round_ + 1} {mode:>3}: {run['rps']:>9,.0f} req/s, "
                    f"{run['cpu_us_per_request']:.2f} us CPU/request {run['errors']}",
                    flush=True,
                )
    median = medians(runs)
    rps_cost = 1 - median["on"]["rps"] / median["off"]["rps"]
    cpu_cost = median["on"]["cpu_us_per_request"] / median["off"]["cpu_us_per_request"] - 1
    print(
        f"cost of accounting: {rps_cost:+.1%} req/s, {cpu_cost:+.1%} CPU per request "
        f"(budget {args.budget:.0%})"
    )
    return 0 if cpu_cost <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
