"""``python -m bench.workers``: xps-server with several worker processes, next to nginx.

- throughput: for the small, proxy and close cases (``bench.scenarios``), xps-server with
  ``"workers": N`` and nginx with ``worker_processes N`` (``--workers``, default 2), each
  measured with wrk (or ``bench.loadgen``) for ``--duration`` seconds; the load tool needs a
  core too, so each row also gives the CPU time the server spent per request (user + system,
  every process of the server: master and workers), read from /proc before and after;
- scaling: the proxy case again with one worker (``--scaling``), for the 1 -> N speed-up;
- block propagation: ``--blocks`` `block` commands, one at a time, to a master with N
  workers and no state file; the master answers once every worker has applied the block, so
  the round trip bounds the time until every worker refuses the address at accept. After each
  reply a connection from the blocked address is checked to be refused. p50, p99 and max.

Figures go to stdout; nothing is asserted (the budgets are the reader's: >= 0.8 x nginx,
block p99 <= 50 ms). Keep runs short on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import load, nginx, scenarios
from bench.cli import default_xps
from bench.control import ControlLink
from bench.fixtures import write_fixtures
from bench.peers import NGINX
from bench.servers import Server, ServerError, free_port, raise_nofile

CASES = ("small", "proxy", "close")
WARMUP = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and every process under it, so far."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(times.get(p, 0.0) for p in tree)


def _xps(args: argparse.Namespace, work: Path, scenario: scenarios.Scenario, site, port, n: int):
    config = work / f"xps-{scenario.name}-{n}.json"
    data = scenarios.xps_config(scenario, site, port)
    data["workers"] = n
    config.write_text(json.dumps(data))
    return [args.xps, str(config), "--log-level", "warning"]


def _measure(
    name: str, argv: list[str], port: int, log: Path, scenario: scenarios.Scenario, args
) -> dict:
    spec = load.LoadSpec(
        port=port,
        path=scenario.path,
        headers=scenario.headers,
        connections=scenario.connections or args.connections,
        duration=WARMUP,
        cpu=None,
    )
    with Server(name, argv, port, log) as server:
        load.run_load(spec, args.wrk)
        before = cpu_seconds(server.pid)
        result = load.run_load(replace(spec, duration=args.duration), args.wrk)
        spent = cpu_seconds(server.pid) - before
    requests = max(1, result.requests)
    return {
        "server": name,
        "rps": result.requests_per_sec,
        "cpu_us_per_request": spent / requests * 1e6,
        "errors": result.errors(),
    }


def throughput(args: argparse.Namespace, work: Path) -> list[dict]:
    docroot = work / "www"
    docroot.mkdir()
    write_fixtures(docroot)
    nginx_binary = nginx.find_nginx()
    rows = []
    backend_port = free_port()
    site = scenarios.Site(docroot, backend_port)
    backend_argv = None
    if nginx_binary is not None:
        backend = nginx.command(
            nginx_binary, work / "backend", scenarios.nginx_static_http(site, backend_port)
        )
        backend_argv = backend.argv
    else:
        config = work / "backend.json"
        config.write_text(json.dumps(scenarios.xps_static_config(docroot, backend_port)))
        backend_argv = [args.xps, str(config), "--log-level", "warning"]
    with Server("backend", backend_argv, backend_port, work / "backend.log"):
        for scenario in scenarios.by_name(list(CASES)):
            counts = [args.workers]
            if args.scaling and scenario.name == "proxy":
                counts.insert(0, 1)
            for n in counts:
                port = free_port()
                argv = _xps(args, work, scenario, site, port, n)
                row = _measure(f"xps x{n}", argv, port, work / "xps.log", scenario, args)
                rows.append({"case": scenario.name, **row})
                print(_line(rows[-1]), flush=True)
            if nginx_binary is None:
                continue
            port = free_port()
            text = scenario.peers[NGINX](site, port)
            command = nginx.command(
                nginx_binary, work / f"nginx-{scenario.name}", text, args.workers
            )
            row = _measure(
                f"nginx x{args.workers}", command.argv, port, work / "nginx.log", scenario, args
            )
            rows.append({"case": scenario.name, **row})
            print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict) -> str:
    return (
        f"{row['case']:<6} {row['server']:<9} {row['rps']:>10,.0f} req/s "
        f"{row['cpu_us_per_request']:>8.1f} us CPU/req  {row['errors']}"
    )


def _refused(port: int, source: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as sock:
        sock.settimeout(5)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def _serving(link: ControlLink, count: int) -> bool:
    rows = link.command({"cmd": "snapshot", "args": {"limit": 0}})["result"].get("workers", [])
    return len(rows) == count and all(row["ready"] for row in rows)


def block_propagation(args: argparse.Namespace, work: Path) -> dict:
    docroot = work / "blocks-www"
    docroot.mkdir()
    (docroot / "index.html").write_text("hi\n")
    port = free_port()
    control = str(work / "xps.sock")
    config = work / "xps-blocks.json"
    config.write_text(
        json.dumps(
            {
                "workers": args.workers,
                "access_log": None,
                "control_socket": control,
                "servers": [
                    {
                        "listeners": [{"host": "127.0.0.1", "port": port}],
                        "routes": [
                            {"req_path": "/", "type": "file_serve", "dir_path": str(docroot)}
                        ],
                    }
                ],
            }
        )
    )
    argv = [args.xps, str(config), "--log-level", "warning"]
    with Server("xps blocks", argv, port, work / "xps-blocks.log"):
        link = ControlLink(control, 30)
        deadline = time.monotonic() + 30
        while not _serving(link, args.workers):
            if time.monotonic() > deadline:
                raise ServerError("the workers did not start")
            time.sleep(0.1)
        latencies = []
        unrefused = 0
        for index in range(args.blocks):
            address = f"127.9.{index >> 8 & 255}.{index & 255 or 1}"
            started = time.perf_counter()
            reply = link.command({"cmd": "block", "args": {"cidr": address}})
            latencies.append((time.perf_counter() - started) * 1000)
            if not reply.get("ok"):
                raise ServerError(f"block refused: {reply}")
            unrefused += not _refused(port, address)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * len(latencies)) - 1)]
    result = {
        "blocks": len(latencies),
        "workers": args.workers,
        "p50_ms": statistics.median(latencies),
        "p99_ms": p99,
        "max_ms": latencies[-1],
        "not_refused_after_reply": unrefused,
    }
    print(
        f"block -> every worker refusing ({args.workers} workers, {len(latencies)} blocks): "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
        f"max {result['max_ms']:.2f} ms; not refused after the reply: {unrefused}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--xps", default=default_xps(), help="the xps-server to run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--blocks", type=int, default=100, help="block commands (0: none)")
    parser.add_argument("--no-throughput", action="store_true", help="block propagation only")
    parser.add_argument("--scaling", action="store_true", help="the proxy case with 1 worker too")
    parser.add_argument("--loadgen", action="store_true", help="the Python load client")
    args = parser.parse_args(argv)
    args.wrk = None if args.loadgen else load.find_wrk()
    raise_nofile()
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="xps-bench-workers-") as tmp:
        work = Path(tmp)
        if not args.no_throughput:
            results["throughput"] = throughput(args, work)
        if args.blocks:
            results["blocks"] = block_propagation(args, work)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
