"""Present results: the summary table on stdout, and the JSON in ``bench/results/``.

The table has one row per server and case: xps-server first, with the case's budget and
verdict, then its peers, each with xps's ratio to it; ``*`` marks the best peer, the one the
budget compares with.
"""

import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.runner import ScenarioResult, TargetResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATEST = RESULTS_DIR / "latest.json"
_MIB = 2**20
_HEADERS = ("case", "conns", "server", "req/s", "MiB/s", "p99 ms", "xps/peer", "budget", "result")
_LEFT = frozenset((0, 2, 7, 8))  # columns aligned left; the numbers align right
BEST_MARK = "*"


def _rate(target: TargetResult) -> tuple[str, str, str]:
    """req/s, MiB/s and p99 cells."""
    if target.load is None:
        return ("error", "error", "error")
    load = target.load
    p99 = "-" if load.latency_p99_ms is None else _milliseconds(load.latency_p99_ms)
    return (f"{load.requests_per_sec:,.0f}", f"{load.bytes_per_sec / _MIB:,.1f}", p99)


def _milliseconds(value: float) -> str:
    """Three significant figures or so: 0.412, 3.27, 41.3, 1,204."""
    if value < 10:
        return f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _rows(result: ScenarioResult) -> list[tuple[str, ...]]:
    scenario = result.scenario
    best = result.best_peer()
    verdict = result.verdict
    if best is not None and result.ratio is not None:
        verdict += f" {result.ratio:.2f} x {best.name}"
    rows = [
        (
            scenario.name,
            f"{result.connections:,}",
            result.xps.name,
            *_rate(result.xps),
            "",
            scenario.budget_text() if result.peers else "-",
            verdict,
        )
    ]
    for peer in result.peers:
        name = peer.name + (BEST_MARK if peer is best else "")
        rows.append(("", "", name, *_rate(peer), _ratio(result.ratio_to(peer)), "", ""))
    return rows


def table(results: list[ScenarioResult]) -> str:
    """The summary table, then one line per error or note."""
    rows = [_HEADERS, *(row for r in results for row in _rows(r))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.ljust(width) if i in _LEFT else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])]
    if any(r.peers for r in results):
        out.append(f"{BEST_MARK} the best peer: the budget is xps req/s / its req/s")
    for result in results:
        for target in (result.xps, *result.peers):
            prefix = f"{result.scenario.name} / {target.name}"
            if target.error:
                out.append(f"{prefix}: ERROR {target.error}")
            if target.load is not None and target.load.errors():
                out.append(f"{prefix}: {target.load.errors()}")
            out.extend(f"{prefix}: {note}" for note in target.notes)
    return "\n".join(out)


def _target_json(result: ScenarioResult, target: TargetResult) -> dict[str, Any]:
    return {
        "name": target.name,
        "error": target.error,
        "notes": target.notes,
        "load": None if target.load is None else asdict(target.load),
        "rounds_req_per_sec": target.rounds,
        "xps_ratio": None if target is result.xps else result.ratio_to(target),
    }


def write_json(results: list[ScenarioResult], settings: dict[str, Any]) -> Path:
    """Write every number and message of this run to bench/results/: a file named after the
    time, and a copy as latest.json. Returns the time-named file."""
    created = datetime.now(UTC)
    best = [r.best_peer() for r in results]
    document = {
        "created": created.isoformat(timespec="seconds"),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "settings": settings,
        "cases": [
            {
                "name": r.scenario.name,
                "description": r.scenario.description,
                "path": r.scenario.path,
                "headers": list(r.scenario.headers),
                "connections": r.connections,
                "budget": r.scenario.budget,
                "best_peer": None if peer is None else peer.name,
                "ratio": r.ratio,
                "verdict": r.verdict,
                "servers": [_target_json(r, t) for t in (r.xps, *r.peers)],
            }
            for r, peer in zip(results, best, strict=True)
        ],
    }
    text = json.dumps(document, indent=2) + "\n"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"bench-{created:%Y%m%d-%H%M%S}.json"
    path.write_text(text)
    LATEST.write_text(text)
    return path
