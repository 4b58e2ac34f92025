"""``python -m bench.limits``: what a route's ``limit_req`` (and ``limit_conn``) costs small files.

Serves the 1 KiB file of the standard fixtures three ways, side by side in one run: with no
limit (``none``), with a ``limit_req`` so generous that it never rejects (``limit_req``: every
request still goes through the bucket arithmetic), and with that and a ``limit_conn`` that
never rejects either (``both``). The modes alternate for ``--rounds`` rounds of wrk
(``-c50``, ``--duration`` seconds); each reports requests/s and the server's CPU time per
request, as ``bench.accounting`` does, and the figures are the medians over the rounds. The
budget is ``limit_req`` costing at most 5 % of ``none`` in CPU per request (``--budget``).
Exit code 0 within it, 1 past it. A run whose responses are not all 200 (a limit that did
reject) is an error, never a measurement.

``--instructions`` counts instructions per request under callgrind instead (see
``bench.accounting``: the figure that does not move with the machine's other work).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.accounting import _measure, bench_parser, instruction_costs, medians
from bench.fixtures import write_fixtures
from bench.load import find_wrk

GENEROUS_REQ = {"rate": 1e9, "burst": 1_000_000}  # never rejects a benchmark's requests
GENEROUS_CONN = {"per_ip": 1_000_000}
MODES: dict[str, dict[str, Any]] = {
    "none": {},
    "limit_req": {"limit_req": GENEROUS_REQ},
    "both": {"limit_req": GENEROUS_REQ, "limit_conn": GENEROUS_CONN},
}


def _configs(root: Path, docroot: Path) -> dict[str, Path]:
    configs = {}
    for mode, limits in MODES.items():
        route = {"req_path": "/", "type": "file_serve", "dir_path": str(docroot), **limits}
        listener = {"host": "127.0.0.1", "port": 0}
        data = {"servers": [{"listeners": [listener], "routes": [route]}]}
        configs[mode] = root / f"{mode}.json"
        configs[mode].write_text(json.dumps(data))
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.limits", __doc__, 0.05)
    args = parser.parse_args(argv)
    command = shlex.split(args.xps)
    with tempfile.TemporaryDirectory(prefix="xps-limits-") as tmp:
        root = Path(tmp)
        docroot = root / "www"
        docroot.mkdir()
        write_fixtures(docroot)
        configs = _configs(root, docroot)
        if args.instructions:
            return instruction_costs(
                command, configs, args, root, ("none", "limit_req", "limit_req")
            )
        args.wrk = find_wrk()
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        order = list(MODES)
        for round_ in range(args.rounds):
            for mode in order if round_ % 2 == 0 else reversed(order):
                run = _measure(command, configs[mode], root, args)
                if run["errors"]:
                    raise SystemExit(f"{mode}: not every response was a 200: {run['errors']}")
                runs[mode].append(run)
                print(
                    f"round {round_ + 1} {mode:>9}: {run['rps']:>9,.0f} req/s, "
                    f"{run['cpu_us_per_request']:.2f} us CPU/request",
                    flush=True,
                )
    median = medians(runs)
    base = median["none"]
    for mode in ("limit_req", "both"):
        rps_cost = 1 - median[mode]["rps"] / base["rps"]
        cpu_cost = median[mode]["cpu_us_per_request"] / base["cpu_us_per_request"] - 1
        print(f"cost of {mode}: {rps_cost:+.1%} req/s, {cpu_cost:+.1%} CPU per request")
    cost = median["limit_req"]["cpu_us_per_request"] / base["cpu_us_per_request"] - 1
    print(f"budget: limit_req within {args.budget:.0%} CPU per request")
    return 0 if cost <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
